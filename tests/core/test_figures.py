"""Figures carry their own meaning: the record validates itself, slm.json round-trips it, compare and the
index read its fields (never key patterns), and significance is the one rule in slm.stats."""

import json
import re

import pytest

from slm.errors import SlmError
from slm.figure import Figure, analytic, dump, load, scored, setting, text, timed
from slm.record import SCHEMA, figures_of, read_record, write_record
from slm.report.compare import build_index, compare, key_figures
from slm.report.lineup import TIMED_FLOOR, lineup, sentences
from slm.stats import Z95, change, ci95, mcnemar, seed_interval, t975, wilson


def test_a_figure_refuses_what_it_cannot_mean():
    with pytest.raises(SlmError, match="better='up'"):
        Figure("x", "x", 1.0, "s", better="up")
    with pytest.raises(SlmError, match="how='guessed'"):
        Figure("x", "x", 1.0, "s", how="guessed")
    with pytest.raises(SlmError, match="non-empty"):
        Figure("x", "x", 1.0, "")
    with pytest.raises(SlmError, match="not finite"):
        Figure("x", "x", float("nan"), "s")
    with pytest.raises(SlmError, match="unique"):
        dump([setting("a", "a", 1), setting("a", "b", 2)])


def test_timed_and_scored_figures_carry_their_interval():
    f = timed("t", "decode", 100.0, 2.0, 10)
    assert f.interval == pytest.approx(t975(9) * 2.0 / 10 ** 0.5) and f.n == 10 and f.spread == 2.0
    assert text(f) == "100 ± 1.431 tok/s"
    s = scored("p", "loss", 2.0, 0.01, 5000, "nats/token")
    assert s.interval == pytest.approx(Z95 * 0.01)
    share = Figure("k", "KV share", 0.25, "share", interval=0.01)
    assert text(share) == "25.0% ± 1.0%"
    proj = Figure("d", "decode", 50.0, "tok/s", how="projected", expected_error=0.21)
    assert text(proj) == "50 tok/s (±21% expected)"


def test_record_round_trips_figures_and_refuses_old_or_broken_records(tmp_path):
    figs = [timed("a.tg", "decode", 10.0, 1.0, 3, key=True), setting("threads", "threads", 2, "threads")]
    write_record(tmp_path, "profile", {}, result={"rows": []}, figures=figs)
    rec = read_record(tmp_path)
    assert rec["schema"] == SCHEMA and figures_of(rec) == figs
    on_disk = json.loads((tmp_path / "slm.json").read_text())["result"]["figures"][0]
    assert set(on_disk) >= {"name", "label", "value", "unit", "better", "group", "how", "interval"}
    old = tmp_path / "old"
    old.mkdir()
    (old / "slm.json").write_text(json.dumps({"kind": "profile", "result": {"summary": {"x": 1}}}))
    with pytest.raises(SlmError, match="older slm .*re-run"):
        read_record(old)
    (old / "slm.json").write_text("{not json")
    with pytest.raises(SlmError, match="not valid JSON"):
        read_record(old)
    (old / "slm.json").write_text("[1, 2]")
    with pytest.raises(SlmError, match="not an slm record"):
        read_record(old)
    with pytest.raises(SlmError, match="must be a list"):
        load({"a": 1})


def test_change_rule():
    a, b = timed("x", "x", 100.0, 1.0, 10), timed("x", "x", 80.0, 1.0, 10)
    c = change(a, b, TIMED_FLOOR)
    assert c.verdict == "significant" and c.rel == pytest.approx(-0.2)
    near = timed("x", "x", 95.0, 1.0, 10)  # 5 % apart, intervals tight: below the floor for timed figures
    assert change(a, near, TIMED_FLOOR).verdict == "within noise"
    assert change(a, timed("x", "x", 80.0, 1.0, 10, disturbed=True), TIMED_FLOOR).verdict == "disturbed"
    e1, e2 = analytic("p", "p", 10, "parameters"), analytic("p", "p", 11, "parameters")
    assert change(e1, e2).verdict == "significant" and change(e1, e1).verdict == "same"
    bare = Figure("x", "x", 90.0, "tok/s")
    assert change(a, bare, TIMED_FLOOR).verdict == "no interval"


def test_a_projected_figure_shows_its_expected_error_not_no_interval():
    from slm.report.lineup import cell

    proj = Figure("projected.tg", "decode (projected)", 122.0, "tok/s", how="projected", expected_error=0.21)
    assert cell(proj) == "122 (±21% expected)" and cell(Figure("x", "x", 90.0, "tok/s")) == "90 (no interval)"


def test_stats_helpers():
    assert ci95(1.0, 1) is None and t975(30) == 2.042
    lo, hi = wilson(0, 10)
    assert lo == 0 and 0.25 < hi < 0.35  # the Wilson upper bound for 0/10 is 0.278
    assert mcnemar(0, 0) == 1.0 and mcnemar(0, 8) == pytest.approx(2 / 2**8)
    m, h = seed_interval([1.0, 1.2, 0.8], [0.01, 0.01, 0.01])
    assert m == pytest.approx(1.0) and h == pytest.approx(t975(2) * 0.2 / 3 ** 0.5)
    m1, h1 = seed_interval([1.0], [0.05])
    assert h1 == pytest.approx(Z95 * 0.05)


def _profile(tmp_path, name, decode, prefill, kind="profile"):
    d = tmp_path / name
    d.mkdir()
    figs = [setting("threads", "CPU threads", 2, "threads"),
            timed("llama.cpp.tg128@d0", "decode at depth 0 (llama.cpp)", decode, 2.0, 10, key=True),
            timed("llama.cpp.pp512", "prefill of 512 tokens (llama.cpp)", prefill, 20.0, 10, key=True),
            analytic("kv_bytes", "KV cache per token (f16)", 46080, "bytes", "lower", "memory")]
    write_record(d, kind, {"threads": 2}, figures=figs)
    return d


def test_compare_reads_the_figures(tmp_path):
    base = _profile(tmp_path, "base", 141.2, 900.0)
    x36 = _profile(tmp_path, "x36-cpt", 125.1, 905.0)
    out = compare([base, x36], tmp_path / "cmp.html").read_text()
    lead = re.search(r'<p class="lead">(.*?)</p>', out).group(1)
    # −11.4 %; its interval ± 0.886·√((1.43/141.2)² + (1.43/125.1)²) = ±1.4 %
    assert lead.startswith("B: x36-cpt vs A: base: decode at depth 0 (llama.cpp) -11.4% ± 1.4%"), lead
    assert "within noise: prefill of 512 tokens (llama.cpp)" in lead
    assert "141.2 ± 1.431" in out and "<h2>Speed</h2>" in out and "<h2>Memory</h2>" in out
    assert "CPU threads" in out  # settings apart, by label


def test_compare_of_runs_sharing_nothing_says_so(tmp_path):
    a = _profile(tmp_path, "p", 100.0, 900.0)
    t = tmp_path / "t"
    t.mkdir()
    write_record(t, "train", {}, figures=[Figure("loss", "final training loss", 2.0, "nats/token", "lower",
                                                  "training")])
    lead = re.search(r'<p class="lead">(.*?)</p>', compare([a, t], tmp_path / "c.html").read_text()).group(1)
    assert "share no figure" in lead and "no significant difference" not in lead


def test_sentences_and_lineup_use_labels_not_names():
    lines = lineup([[timed("n1", "decode speed", 100.0, 1.0, 10)],
                    [timed("n1", "decode speed", 50.0, 1.0, 10)]])
    assert lines[0].label == "decode speed" and sentences(lines,
                                                          ["A", "B"])[0].startswith("B vs A: decode speed")


def test_index_lists_unreadable_folders_and_key_figures(tmp_path):
    _profile(tmp_path, "good", 100.0, 900.0)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "slm.json").write_text("{truncated")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "slm.json").write_text(json.dumps({"kind": "export", "result": {"summary": {}}}))
    html = build_index(tmp_path).read_text()
    assert "Unreadable folders" in html and "broken" in html and "older slm" in html
    assert "decode at depth 0 (llama.cpp): 100 ± 1.431 tok/s" in html


def test_key_figures_prefer_the_marked_ones():
    figs = [setting("s", "s", "x"), analytic("a", "a", 1, "layers"),
            analytic("b", "b", 2, "layers", key=True)]
    assert [f.name for f in key_figures(figs)] == ["b"]
    assert [f.name for f in key_figures(figs[:2])] == ["a"]
