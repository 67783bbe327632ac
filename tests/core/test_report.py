"""Reports: self-contained, escaped, and compare/index read every run's slm.json."""

import html
import json
import re

import pytest

from slm.errors import SlmError
from slm.figure import Figure, analytic, setting, timed
from slm.record import write_record
from slm.report.compare import build_index, compare
from slm.report.render import Chart, Table, new_figure, render_report, svg_of


def _run(tmp_path, name, kind, figures, args=None):
    d = tmp_path / name
    d.mkdir()
    write_record(d, kind, args or {}, figures=figures)
    render_report(d / "report.html", name, kind, figures)
    return d


def _speed(name, label, v):
    return timed(name, label, v, 1.0, 10, key=True)


def test_report_is_self_contained_and_escapes_user_text(tmp_path):
    fig, ax = new_figure()
    ax.plot([1, 2], [3, 4])
    ax.set_title("t")
    evil = "<script>alert(1)</script>"
    out = render_report(tmp_path / "r.html", f"model {evil}", "test", [setting("prompt", "prompt", evil)],
                        [Chart("fig", svg_of(fig), "measured on this host")],
                        [Table("tbl", ["a"], [[evil]])])
    text = out.read_text()
    assert evil not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<svg" in text and not re.search(r'(src|href)="(https?:)?//', text)  # nothing loaded from outside
    assert text.count("<script>") == 1  # only our own inline table-sorting script


def test_compare_highlights_differences_across_kinds(tmp_path):
    a = _run(tmp_path, "a", "profile",
             [_speed("d", "decode speed", 100.0), _speed("p", "prefill speed", 900.0),
              setting("threads", "CPU threads", 2, "threads")])
    b = _run(tmp_path, "b", "profile",
             [_speed("d", "decode speed", 120.0), _speed("p", "prefill speed", 900.0),
              setting("threads", "CPU threads", 2, "threads")])
    c = _run(tmp_path, "c", "expand", [analytic("layers_after", "layers after the step", 36, "layers")])
    out = compare([a, b, c], tmp_path / "cmp" / "index.html").read_text()
    assert "+20.0%" in out  # decode relative to A
    assert out.count('class="hl"') >= 1 and "<svg" in out
    assert 'href="../a/report.html"' in out
    with pytest.raises(SlmError, match="at least two"):
        compare([a], tmp_path / "x.html")
    with pytest.raises(SlmError, match="no slm.json"):
        compare([a, tmp_path], tmp_path / "x.html")


def test_compare_before_and_after_expansion(tmp_path, tiny):
    from slm.surgery.expand import ExpandArgs, expand

    base = tiny("llama")
    write_record(base, "import", {})
    expand(base, tmp_path / "x8", ExpandArgs(groups=2, copies=1))
    out = compare([base, tmp_path / "x8"], tmp_path / "cmp.html").read_text()
    rows = {m.group(1): m.group(2)
            for m in re.finditer(r'<tr[^>]*><td class="txt">([^<]+)</td>(.*?)</tr>', out, re.S)}
    assert re.findall(r">([\d,]+)<", rows["layers"]) == ["6", "8"]
    # analytic: exact, no noise
    assert "+33.3%" in rows["layers"] and "significant" in rows["layers"]
    assert "+33.3%" in rows["KV cache per token (f16)"]
    assert "model.layers" not in out and re.search(r"B: x8 vs A: [\w-]+: parameters \+29.0%", out)


def test_index_lists_every_run(tmp_path):
    _run(tmp_path, "01-expand", "expand", [analytic("layers_after", "layers after the step", 36, "layers")])
    _run(tmp_path, "02-profile", "profile", [Figure("d", "decode speed", 50.5, "tok/s", "higher", "speed")])
    (tmp_path / "stray").mkdir()  # folders without slm.json are not runs
    text = build_index(tmp_path).read_text()
    assert text.count('href="01-expand/report.html"') == 1 and "02-profile" in text and "stray" not in text
    assert "decode speed: 50.5 tok/s" in text and "layers after the step: 36 layers" in text
    assert "analytic" in text and "measured here" in text  # how each run's figures were obtained


def test_index_lists_comparisons_and_figures_in_words(tmp_path):
    figs = [setting("device", "device projected onto", "jetson-orin-nx-16gb"),
            timed("llama.cpp.tg128@d0", "decode at depth 0 (llama.cpp, 128 tokens)", 141.2, 2.0, 10,
                  disturbed=True, key=True),
            Figure("projected.tg128@d0", "decode at depth 0 on the device (projected)", 60.1, "tok/s",
                   "higher", "speed", "projected", expected_error=0.211, key=True),
            setting("threads", "CPU threads", 2, "threads")]
    _run(tmp_path, "03-profile", "profile", figs)
    _run(tmp_path, "09-compare", "compare", [setting("runs", "runs compared", "a, b")])
    text = build_index(tmp_path).read_text()
    assert "<h2>Comparisons</h2>" in text and 'href="09-compare/report.html"' in text
    assert "decode at depth 0 (llama.cpp, 128 tokens): 141.2 ± 1.431 tok/s †" in text
    assert "decode at depth 0 on the device (projected): 60.1 tok/s (±21% expected)" in text
    assert ("measured here; projected (within ±21% on published points held out of its calibration)") in text
    assert "CPU threads" not in text  # settings are not key figures


def test_record_has_versions_and_hashes(tmp_path, tiny):
    m = tiny("llama")
    rec = write_record(tmp_path, "x", {"k": 1}, inputs={"model": m})
    assert len(rec["inputs"]["model"]["sha256"]) == 64 and "torch" in rec["versions"]
    assert json.loads((tmp_path / "slm.json").read_text())["args"] == {"k": 1}


def test_index_leads_with_the_decisions_each_linking_to_its_evidence(tmp_path):
    from slm.report.compare import compare_runs

    decode = "decode at depth 0 on the device (projected)"
    for name, v in (("06-profile-base", 120.0), ("05-profile", 100.0)):
        (tmp_path / name).mkdir()
        write_record(tmp_path / name, "profile", {}, figures=[
            Figure("projected.tg", decode, v, "tok/s", "higher", "speed", "projected", exact=True, key=True)])
    compare_runs([tmp_path / "06-profile-base", tmp_path / "05-profile"], tmp_path / "09-compare-profiles")
    (tmp_path / "07-plan").mkdir()
    write_record(tmp_path / "07-plan", "plan", {}, result={"headline": "Recommended on X at 4096 tokens: A."})
    (tmp_path / "04-ablate").mkdir()
    write_record(tmp_path / "04-ablate", "ablate", {}, result={"headline": "expanded gained the most."})
    text = build_index(tmp_path).read_text()
    leads = [tuple(map(html.unescape, m)) for m in
             re.findall(r'<p class="lead"><b>([^<]+)</b> (.*?) <a href="([^"]+)">evidence</a></p>', text)]
    # in the order a reader decides: the device cost of growing, what to ship, the ablation's verdict
    assert [lab for lab, _, _ in leads] == ["What growing cost (the profiles compared):", "What to ship:",
                                            "The ablation's verdict:"]
    assert [h for _, _, h in leads] == ["09-compare-profiles/index.html", "07-plan",
                                        "04-ablate"]  # no page written there: the folder
    # the growing cost is the compare's own sentence, with its change (exact projections: no interval)
    assert decode in leads[0][1] and "-16.7%" in leads[0][1]
