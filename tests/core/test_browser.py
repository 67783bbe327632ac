"""Generated reports in a real browser (headless Chromium): no console errors, no broken images, every
plot rendered, user text shown as text. Screenshots go to $SLM_SCREENSHOTS (default: the test's tmp dir)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from slm.report.compare import build_index, compare
from slm.surgery.expand import ExpandArgs, expand
from slm.surgery.merge import load_recipe, merge

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def open_report(browser, path: Path, shot: Path) -> tuple[object, list[str]]:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"failed request {r.url}"))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    return page, errors


def assert_renders(page, errors):
    assert errors == []
    broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
    assert broken == 0
    # every figure holds an SVG with drawn content and a non-zero size
    sizes = page.evaluate("""Array.from(document.querySelectorAll('figure')).map(f => {
        const s = f.querySelector('svg'); if (!s) return 0;
        const r = s.getBoundingClientRect(); return s.querySelectorAll('path,rect,use').length > 3 ? r.width * r.height : 0; })""")
    assert all(a > 10_000 for a in sizes), sizes


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    from tests.conftest import make_tiny

    root = tmp_path_factory.mktemp("browser")
    evil = root / "<script>alert('x')</script>"
    make_tiny(evil, "llama")
    rep = root / "reports"
    expand(evil, rep / "expand", ExpandArgs(groups=3, parity=True))
    make_tiny(root / "b", "llama", seed=5)
    (root / "r.yaml").write_text(yaml.safe_dump({"method": "slerp", "models": [str(evil), str(root / "b")], "t": [0, 1]}))
    merge(load_recipe(root / "r.yaml"), rep / "merge")
    compare([rep / "expand", rep / "merge"], rep / "compare" / "index.html")
    build_index(rep)
    return rep


@pytest.mark.parametrize("page_path", ["index.html", "expand/report.html", "merge/report.html", "compare/index.html"])
def test_report_renders_in_chromium(browser, reports, page_path, tmp_path):
    shots = Path(os.environ.get("SLM_SCREENSHOTS", tmp_path))
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
    first = lambda: page.evaluate("document.querySelector('table.sortable tbody tr td').textContent")  # noqa: E731
    assert first() == "0"
    page.click("table.sortable th >> nth=0")
    page.click("table.sortable th >> nth=0")  # second click: descending
    assert first() == "8" and errors == []
