"""Generated reports in a real browser (headless Chromium): no console errors, no broken images, every
plot rendered, user text shown as text. Screenshots go to $SLM_SCREENSHOTS (default: the test's tmp dir)."""

from __future__ import annotations

import pytest
import yaml

from slm.report.compare import build_index, compare
from slm.surgery.expand import ExpandArgs, expand
from slm.surgery.merge import load_recipe, merge
from tests.browser import assert_renders, launch, open_report, shot_dir


@pytest.fixture(scope="module")
def browser():
    yield from launch()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    from tests.conftest import make_tiny

    root = tmp_path_factory.mktemp("browser")
    evil = root / "<script>alert('x')</script>"
    make_tiny(evil, "llama")
    rep = root / "reports"
    expand(evil, rep / "expand", ExpandArgs(groups=3, parity=True))
    make_tiny(root / "b", "llama", seed=5)
    (root / "r.yaml").write_text(yaml.safe_dump({"method": "slerp", "models": [str(evil), str(root / "b")],
                                                 "t": [0, 1]}))
    merge(load_recipe(root / "r.yaml"), rep / "merge")
    compare([rep / "expand", rep / "merge"], rep / "compare" / "index.html")
    build_index(rep)
    return rep


@pytest.mark.parametrize("page_path",
                         ["index.html", "expand/report.html", "merge/report.html", "compare/index.html"])
def test_report_renders_in_chromium(browser, reports, page_path, tmp_path):
    shots = shot_dir(tmp_path)
    page, errors = open_report(browser, reports / page_path, shots / (page_path.replace("/", "_") + ".png"))
    assert_renders(page, errors)
    assert page.title().endswith("slm-lab")
    assert (shots / (page_path.replace("/", "_") + ".png")).stat().st_size > 5_000


def test_script_in_a_model_name_is_text(browser, reports, tmp_path):
    page, errors = open_report(browser, reports / "merge" / "report.html", tmp_path / "evil.png")
    assert errors == []  # an executed alert() or a broken script would show here
    assert page.evaluate("document.querySelectorAll('script').length") == 1  # only the table-sorting script
    assert "<script>alert('x')</script>" in page.inner_text("body")  # shown as text


def test_table_sorts_on_click(browser, reports, tmp_path):
    page, errors = open_report(browser, reports / "expand" / "report.html", tmp_path / "sort.png")

    def first():
        return page.evaluate("document.querySelector('table.sortable tbody tr td').textContent")

    assert first() == "0"
    page.click("table.sortable th >> nth=0")
    page.click("table.sortable th >> nth=0")  # second click: descending
    assert first() == "8" and errors == []


def test_compare_of_profiles_reads_in_words(browser, tmp_path):
    """Two profiles with intervals: the sentence on top, ± per figure, the interference mark and its
    legend."""
    from slm.figure import setting, timed
    from slm.record import write_record

    def run(name, decode, disturbed=False):
        d = tmp_path / name
        d.mkdir()
        figs = [setting("threads", "CPU threads", 2, "threads"),
                timed("llama.cpp.tg128@d0", "decode at depth 0 (llama.cpp, 128 tokens)", decode, 2.0, 10,
                      disturbed=disturbed, key=True),
                timed("llama.cpp.pp512", "prefill of 512 tokens (llama.cpp)", 900.0, 2.0, 10,
                      disturbed=disturbed, key=True)]
        write_record(d, "profile", {}, figures=figs)
        return d

    out = compare([run("base", 141.2), run("x36-cpt", 125.1), run("busy", 60.0, disturbed=True)],
                  tmp_path / "c.html")
    page, errors = open_report(browser, out, shot_dir(tmp_path) / "compare_profiles.png")
    assert_renders(page, errors)
    text = page.inner_text("body")
    assert "B: x36-cpt vs A: base: decode at depth 0 (llama.cpp, 128 tokens) -11.4% ± 1.4%" in text
    assert "C: busy vs A: base: no significant difference" in text and "not judged" in text
    assert "60 ± 1.431 †" in text and "† measured while other processes used the CPU" in text
    assert "llama.cpp.tg128" not in text  # labels, never figure names
