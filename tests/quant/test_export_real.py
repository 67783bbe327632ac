"""slm export on the bundled SmolLM2-135M-Instruct and on a LLaMA-Pro-expanded copy of it (slow)."""

from __future__ import annotations

import math

import pytest

from slm.io import load_model
from slm.quant import runtimes as rt
from slm.quant.export import ExportArgs, export
from slm.quant.gguf_write import write_gguf

pytestmark = pytest.mark.slow
GGUF_TYPES = ["f32", "q8_0", "q6_k", "q4_k_m"]


@pytest.fixture(scope="module")
def real_export(real_model, tmp_path_factory):
    """One validated export per session: 4 GGUF types + ONNX int4 and fp32 (≈ 2 min on 1 thread)."""
    out = tmp_path_factory.mktemp("export") / "smol-export"
    # int4:hqq is the recipe the int4 search keeps on this model; the search itself is
    # tests/quant/test_onnx_search
    res = export(real_model, out, ExportArgs(gguf=GGUF_TYPES, onnx=["int4:hqq", "fp32"], threads=1))
    return out, res


def test_f32_gguf_matches_hf(real_export):
    v = real_export[1]["validation"]["gguf"]["f32"]
    assert v["max_rel_err"] < 1e-3, v
    assert v["top1_agree"] == 1.0
    assert v["same_generation"], v["generation"]  # greedy 32 tokens, token for token
    assert v["kld"]["kld_mean"] < 1e-3  # f32 vs the f16 export: nearly the same distribution


def test_every_type_loads_generates_and_reports_fallbacks(real_export):
    out, res = real_export
    v = res["validation"]
    files = {f["type"]: f for f in res["files"] if f["format"] == "gguf"}
    assert list(files) == GGUF_TYPES
    for t, f in files.items():
        assert (out / f["path"]).stat().st_size == f["size_bytes"]
        r = v["gguf"][t]
        assert r["generation"].strip(), t  # loaded in llama.cpp and generated text
        assert math.isfinite(r["perplexity"])
        if t != "f32":  # every quantized file is further from the f16 reference than the f32 file
            assert r["kld"]["kld_mean"] > v["gguf"]["f32"]["kld"]["kld_mean"] > 0, t
    # hidden 576 is not a multiple of 256: K-quants fall back on most tensors, q8_0 (block 32) never does
    assert files["q8_0"]["fallbacks"] == []
    for t in ("q6_k", "q4_k_m"):
        fb = files[t]["fallbacks"]
        assert fb and all(x["row"] == 576 and x["type"] != x["wanted"] for x in fb)
    # the real bits per weight, read from the files, are above the nominal ones because of the fallbacks
    assert files["q4_k_m"]["bits_per_weight"] > 4.85 and files["q6_k"]["bits_per_weight"] > 6.56
    assert v["gguf"]["q8_0"]["kld"]["kld_mean"] < v["gguf"]["q4_k_m"]["kld"]["kld_mean"]
    html = (out / "report.html").read_text()
    assert "fell back" in html and "blk.0.attn_q.weight" in html


def test_gguf_tokenizer_matches_hf(real_export):
    tok = real_export[1]["validation"]["tokenizer"]
    bad = [r for r in tok["rows"] if r["hf"] != r["gguf"]]
    assert not bad, bad
    assert tok["strings"] == len(rt.TOKENIZER_STRINGS) and real_export[1]["pre_tokenizer"] == "smollm"


def test_onnx_exports_run_in_onnxruntime_genai(real_export):
    out, res = real_export
    o = res["validation"]["onnx"]
    assert (out / "onnx-int4"
            / "genai_config.json").is_file() and (out / "onnx-fp32" / "tokenizer.json").is_file()
    assert o["fp32"]["max_rel_err"] < 1e-3 and o["fp32"]["top1_agree"] == 1.0, o["fp32"]
    assert o["fp32"]["same_generation"]
    assert o["int4"]["generation"].strip() and math.isfinite(o["int4"]["perplexity"])
    sizes = {f["type"]: f["size_bytes"] for f in res["files"] if f["format"] == "onnx"}
    assert sizes["int4"] < sizes["fp32"] / 4


def test_expanded_model_f32_gguf_matches_hf(real_model, tmp_path):
    """LLaMA Pro expansion 30 → 36 layers, then GGUF: logits and 32 greedy tokens as HF."""
    from transformers import AutoTokenizer

    from slm.surgery.expand import ExpandArgs, expand

    x36 = tmp_path / "x36"
    expand(real_model, x36, ExpandArgs(groups=6, copies=1, parity=False))
    gguf = write_gguf(x36, tmp_path / "x36-f32.gguf", "f32")
    model = load_model(x36).eval()
    assert model.config.num_hidden_layers == 36
    prompts = rt.prompt_ids(AutoTokenizer.from_pretrained(str(x36)), model.config.vocab_size)
    with rt.open_gguf(gguf, 128, exact=True, threads=1) as llm:
        cmp = rt.compare_logits([rt.hf_logits(model, p) for p in prompts], [llm.logits(p) for p in prompts])
        assert cmp["max_rel_err"] < 1e-3 and cmp["top1_agree"] == 1.0, cmp
        assert rt.hf_greedy(model, prompts[2], 32) == llm.greedy(prompts[2], 32)
