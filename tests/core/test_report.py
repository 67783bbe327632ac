"""Reports: self-contained, escaped, and compare/index read every run's slm.json."""

import json
import re

import pytest

from slm.errors import SlmError
from slm.record import write_record
from slm.report.compare import build_index, compare
from slm.report.render import Figure, Table, new_figure, render_report, svg_of


def _run(tmp_path, name, kind, summary, args=None):
    d = tmp_path / name
    d.mkdir()
    write_record(d, kind, args or {}, result={"summary": summary})
    render_report(d / "report.html", name, kind, summary)
    return d


def test_report_is_self_contained_and_escapes_user_text(tmp_path):
    fig, ax = new_figure()
    ax.plot([1, 2], [3, 4])
    ax.set_title("t")
    evil = "<script>alert(1)</script>"
    out = render_report(tmp_path / "r.html", f"model {evil}", "test", {"prompt": evil},
                        [Figure("fig", svg_of(fig), "measured on this host")], [Table("tbl", ["a"], [[evil]])])
    text = out.read_text()
    assert evil not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<svg" in text and not re.search(r'(src|href)="(https?:)?//', text)  # nothing loaded from outside
    assert text.count("<script>") == 1  # only our own inline table-sorting script


def test_compare_highlights_differences_across_kinds(tmp_path):
    a = _run(tmp_path, "a", "profile", {"decode tok/s": 100.0, "prefill tok/s": 900.0, "threads": 2})
    b = _run(tmp_path, "b", "profile", {"decode tok/s": 120.0, "prefill tok/s": 900.0, "threads": 2})
    c = _run(tmp_path, "c", "expand", {"layers after": 36})
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
    rows = {m.group(1): m.group(2) for m in re.finditer(r'<tr[^>]*><td class="txt">([^<]+)</td>(.*?)</tr>', out, re.S)}
    assert re.findall(r">([\d,]+)<", rows["layers (config.json)"]) == ["6", "8"]
    assert "+33.3%" in rows["layers (config.json)"] and "significant" in rows["layers (config.json)"]  # exact: no noise
    assert "+33.3%" in rows["KV cache per token (f16, config.json)"]  # exact: no noise
    assert "model.layers" not in out and re.search(r"B: x8 vs A: [\w-]+: parameters \(config.json\) \+29.0%", out)


def test_index_lists_every_run(tmp_path):
    _run(tmp_path, "01-expand", "expand", {"layers after": 36})
    _run(tmp_path, "02-profile", "profile", {"decode tok/s": 50.5})
    (tmp_path / "stray").mkdir()  # folders without slm.json are not runs
    text = build_index(tmp_path).read_text()
    assert text.count('href="01-expand/report.html"') == 1 and "02-profile" in text and "stray" not in text
    assert "decode tok/s: 50.5" in text and "layers after the step: 36" in text  # labels from the registry
    assert "computed from the weights written" in text  # how each run's figures were obtained


def test_index_lists_comparisons_and_figures_in_words(tmp_path):
    s = {"how": "measured on this host", "device": "jetson-orin-nx-16gb", "llama.cpp.tg128@d0.tok_s": 141.2,
         "llama.cpp.tg128@d0.tok_s.std": 2.0, "llama.cpp.tg128@d0.tok_s.n": 10, "llama.cpp.tg128@d0.tok_s.disturbed": True,
         "projected.tg128@d0.tok_s": 60.1, "projected.decode_expected_error": 0.211, "schema_version": 2, "threads": 2}
    _run(tmp_path, "03-profile", "profile", s)
    _run(tmp_path, "09-compare", "compare", {"runs": "a, b"})
    text = build_index(tmp_path).read_text()
    assert "<h2>Comparisons</h2>" in text and 'href="09-compare/report.html"' in text
    assert "decode at depth 0 (llama.cpp, 128 tokens): 141.2 ± 1.4 tok/s †" in text
    assert "decode at depth 0 on the device (projected): 60.1 tok/s" in text
    assert ("measured on this host; jetson-orin-nx-16gb figures projected (decode within ±21% on published points "
            "held out of its calibration)") in text
    assert "schema_version" not in text and "result schema version" not in text  # settings are not key figures


def test_record_has_versions_and_hashes(tmp_path, tiny):
    m = tiny("llama")
    rec = write_record(tmp_path, "x", {"k": 1}, inputs={"model": m})
    assert len(rec["inputs"]["model"]["sha256"]) == 64 and "torch" in rec["versions"]
    assert json.loads((tmp_path / "slm.json").read_text())["args"] == {"k": 1}
