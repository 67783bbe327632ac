"""Headless Chromium for the report tests: Debian's chromium driven by playwright (it downloads no browser).
Screenshots go to $SLM_SCREENSHOTS when set (default: the test's tmp dir)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch():
    """Yield a launched browser, or skip (fail under CI) when chromium is missing."""
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
    broken = page.evaluate("Array.from(document.images)"
                           ".filter(i => !i.complete || i.naturalWidth === 0).length")
    assert broken == 0
    # every figure holds an SVG with drawn content and a non-zero size
    sizes = page.evaluate("""Array.from(document.querySelectorAll('figure')).map(f => {
        const s = f.querySelector('svg'); if (!s) return 0;
        const r = s.getBoundingClientRect(); """
        "return s.querySelectorAll('path,rect,use').length > 3 ? r.width * r.height : 0; })")
    assert all(a > 10_000 for a in sizes), sizes




def shot_dir(tmp_path: Path) -> Path:
    return Path(os.environ.get("SLM_SCREENSHOTS", tmp_path))
