"""Reports of real runs in headless Chromium: two profiles of the bundled GGUF, two training runs, their
compare pages and the index. No console errors, no broken images, every figure drawn, the figures say how
their numbers were obtained; screenshots in $SLM_SCREENSHOTS (or the test's tmp dir)."""

from __future__ import annotations

import json

import pytest

from slm.cli import main
from slm.report.compare import build_index, compare
from tests.browser import assert_renders, launch, open_report, shot_dir
from tests.conftest import make_tiny
from tests.train.conftest import VOCAB, save_byte_tokenizer, write_texts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    yield from launch()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """reports/ with two quick profiles (Orin NX 16GB and Orin Nano 8GB projections, different quant sweeps),
    two tiny CPT runs (expanded blocks vs LoRA), a compare page for each pair and the index."""
    import torch

    from slm.gguf_import import default_gguf
    from slm.surgery.expand import ExpandArgs, expand
    from slm.train.args import load_recipe
    from slm.train.data import DataArgs, Source, prepare
    from slm.train.loop import train

    root = tmp_path_factory.mktemp("runs")
    rep = root / "reports"
    gguf = default_gguf()
    assert main(["profile", str(gguf), "--quick", "--quant", "q8_0,q4_0", "--device", "jetson", "--threads",
                 "1", "--backends", "llama.cpp", "-o", str(rep / "profile-nx")]) == 0
    assert main(["profile", str(gguf), "--quick", "--device", "jetson-orin-nano-8gb", "--threads", "1",
                 "--backends", "llama.cpp", "-o", str(rep / "profile-nano")]) == 0

    model = make_tiny(root / "tiny", "llama", vocab_size=VOCAB)
    save_byte_tokenizer(model)
    expand(model, root / "tiny-x8", ExpandArgs(groups=2, copies=1, parity=False))
    save_byte_tokenizer(root / "tiny-x8")
    data = root / "data"
    prepare(DataArgs([Source("code", str(write_texts(root / "code", 40, 1, "code"))),
                      Source("prose", str(write_texts(root / "prose", 40, 2, "prose")), weight=0.0,
                             heldout=1.0)],
                     str(model), heldout=0.1, workers=1, progress=False), data)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, start, trainable in (("train-expanded", root / "tiny-x8", "expanded"),
                                       ("train-lora", model, "lora")):
            train(load_recipe(None, [f"model={start}", f"data={data}", f"out={rep / name}",
                                     f"trainable={trainable}", "steps=6", "seq_len=64", "global_batch=2",
                                     "micro_batch=2", "lr=1e-3", "eval_every=3", "eval_tokens=256",
                                     "progress=false"]))
    finally:
        torch.set_num_threads(n)
    compare([rep / "profile-nx", rep / "profile-nano"], rep / "compare-profiles" / "index.html")
    compare([rep / "train-expanded", rep / "train-lora"], rep / "compare-train" / "index.html")
    build_index(rep, "slm-lab: <b>test</b> runs")
    return rep


PAGES = ["index.html", "profile-nx/index.html", "profile-nano/index.html", "train-expanded/report.html",
         "compare-profiles/index.html", "compare-train/index.html"]


@pytest.mark.parametrize("page_path", PAGES)
def test_run_report_renders(browser, runs, page_path, tmp_path):
    shot = shot_dir(tmp_path) / ("run_" + page_path.replace("/", "_") + ".png")
    page, errors = open_report(browser, runs / page_path, shot)
    assert_renders(page, errors)
    assert shot.stat().st_size > 5_000
    assert (runs / page_path).stat().st_size < 2_000_000  # one self-contained file under ~2 MB
    html = (runs / page_path).read_text()
    # opens offline
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://cdn" not in html


def test_profile_figures_say_how_they_were_measured(browser, runs, tmp_path):
    page, errors = open_report(browser, runs / "profile-nx" / "index.html", tmp_path / "p.png")
    assert errors == []
    n_fig = page.evaluate("document.querySelectorAll('figure').length")
    captions = page.evaluate("Array.from(document.querySelectorAll('figure figcaption')).map(f => "
                             "f.innerText)")
    assert n_fig >= 4 and len(captions) == n_fig and all(c.strip() for c in captions), captions
    hows = ("measured", "projected", "analytic")
    assert all(any(h in c for h in hows) for c in captions), captions  # each says how it was obtained
    text = page.inner_text("body")
    assert "measured on this host" in text and "projected" in text and "Orin NX 16GB" in text
    # every SVG plot has a title and labelled axes (matplotlib writes them as text groups)
    for svg_text in page.evaluate("Array.from(document.querySelectorAll('figure svg')).map(s => "
                                  "s.textContent)"):
        assert svg_text.strip()


def test_index_lists_every_run_with_key_figures_and_escapes_the_title(browser, runs, tmp_path):
    page, errors = open_report(browser, runs / "index.html", tmp_path / "i.png")
    assert errors == []
    assert "<b>test</b>" in page.inner_text("h1")  # the title is text, not markup
    rows = page.evaluate("Array.from(document.querySelectorAll('table tbody tr')).map(r => r.innerText)")
    kinds = sorted(r.split("\t")[1] for r in rows)
    assert kinds == ["profile", "profile", "train", "train"]
    links = page.evaluate("Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'))")
    for href in links:
        assert (runs / href).is_file(), href
    rec = json.loads((runs / "train-lora" / "slm.json").read_text())
    assert {f["name"]: f["value"] for f in rec["result"]["figures"]}["trainable_params"] > 0


def test_compare_lines_up_two_profiles(browser, runs, tmp_path):
    page, errors = open_report(browser, runs / "compare-profiles" / "index.html", tmp_path / "c.png")
    assert errors == []
    text = page.inner_text("body")
    assert "profile-nx" in text and "profile-nano" in text
    assert "jetson-orin-nano-8gb" in text and "jetson-orin-nx-16gb" in text  # the args that differ are shown
    # figures by label with ± and a verdict, a sentence on top, settings apart; no machine keys
    assert "B: profile-nano vs A: profile-nx: " in text and "Settings (how the runs were made" in text
    assert "decode at depth 0 (llama.cpp, 32 tokens)" in text and " ± " in text
    assert "llama.cpp.tg32" not in text and "schema_version" not in text


def test_every_figure_of_every_run_carries_its_meaning(runs):
    """Every figure every real run wrote has a unit, a direction and how it was obtained, and nothing is
    stored as an untyped summary."""
    from slm.figure import BETTER, HOWS

    recs = [json.loads(p.read_text()) for p in sorted(runs.rglob("slm.json"))]
    assert {r["kind"] for r in recs} >= {"profile", "train"}
    for r in recs:
        assert "summary" not in r["result"] and r["schema"] == 3
        for f in r["result"].get("figures", []):
            assert f["unit"] and f["better"] in BETTER and f["how"] in HOWS, (r["kind"], f)
