"""`--onnx int4` tries several int4 recipes and keeps, by the rule, one within a q4_k_m's size.

Fast tests use a tiny random Llama with tied embeddings and a byte tokenizer (the builder needs
tokenizer.json); the slow one the bundled SmolLM2-135M."""

from __future__ import annotations

import json

import pytest

from slm.errors import SlmError
from slm.quant import onnx_search as O
from slm.quant import runtimes as rt
from slm.quant.export import ExportArgs, export
from slm.quant.onnx_ortq import HEAD
from slm.score import Scoring
from tests.train.conftest import VOCAB, save_byte_tokenizer

TEXT = "The keeper lit the lamp at dusk and wrote the wind, the sea and the ships in the log. " * 8


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory):
    from tests.conftest import make_tiny

    m = make_tiny(tmp_path_factory.mktemp("o4") / "tiny", tied=True, vocab_size=VOCAB)
    save_byte_tokenizer(m)
    return m


def _inputs(model, tmp_path) -> O.Inputs:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(model)).encode(TEXT)
    score_ids, calib = O.split_text(ids, 64)
    (tmp_path / "work").mkdir()
    (tmp_path / "logs").mkdir()
    return O.Inputs(model, "cpu", tmp_path / "work", tmp_path / "logs", score_ids, calib)


@pytest.fixture(scope="module")
def searched(tiny_tok, tmp_path_factory):
    """One search over two recipes (builder RTN and onnxruntime HQQ) with no size limit that binds."""
    from slm.io import read_config
    from slm.spec import spec_from_config

    tmp = tmp_path_factory.mktemp("search")
    inp = _inputs(tiny_tok, tmp)
    mp = pytest.MonkeyPatch()
    mp.setattr(O, "DEFAULT_SEARCH", ("default", "hqq"))
    mp.setattr(O, "size_bound", lambda spec: 10**12)
    try:
        res = O.search("search", inp, spec_from_config(read_config(tiny_tok)), Scoring("all", 64),
                       tmp / "kept")
    finally:
        mp.undo()
    return res, tmp, inp


def test_search_scores_every_candidate_on_both_axes_and_keeps_by_the_rule(searched):
    res, tmp, inp = searched
    rows = {r["name"]: r for r in res["candidates"]}
    assert list(rows) == ["default", "hqq"]
    for r in rows.values():
        assert r["kld"] > 0 and r["weight_bytes"] > 0 and r["fits"] and r["build_s"] >= 0, r
        assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0, r  # timed here, both phases
    assert res["rule"] == "balanced" and "10 %" in res["rule_text"]
    assert res["kept"] == O.pick(res["candidates"], "balanced")
    assert res["settings"]["tool"] == O.CANDIDATES[res["kept"]].tool
    assert res["score_tokens"] == len(inp.score_ids) and res["calibration_tokens"] > 0
    assert (tmp / "kept" / "genai_config.json").is_file()
    assert not list(inp.work.glob("int4-*"))  # the candidates not kept are gone
    # the kept folder runs in onnxruntime-genai and gives the logits its KLD was measured on
    assert rt.onnx_logits(tmp / "kept", inp.score_ids[:8]).shape == (8, VOCAB)


def test_the_size_bound_overrides_a_lower_kld():
    rows = [{"name": "small", "kld": 0.5, "weight_bytes": 90, "fits": True},
            {"name": "best", "kld": 0.1, "weight_bytes": 120, "fits": False},
            {"name": "mid", "kld": 0.3, "weight_bytes": 95, "fits": True},
            {"name": "broken", "error": "builder failed", "weight_bytes": 1}]
    assert O.pick(rows) == "mid"
    # nothing fits: the smallest, flagged unfit
    assert O.pick([dict(r, fits=False) for r in rows[:3]]) == "small"
    with pytest.raises(SlmError, match="broken: builder failed"):
        O.pick(rows[3:])


def test_rules_trade_kld_against_decode_speed():
    rows = [{"name": "fast", "kld": 0.45, "decode_tok_s": 40.0, "decode_ci95": 1.0, "fits": True},
            {"name": "close", "kld": 0.30, "decode_tok_s": 35.0, "decode_ci95": 0.5, "fits": True},
            {"name": "exact", "kld": 0.08, "decode_tok_s": 4.0, "decode_ci95": 0.2, "fits": True},
            {"name": "noisy", "kld": 0.20, "decode_tok_s": 33.0, "decode_ci95": 3.5, "fits": True}]
    assert O.pick(rows, "quality") == "exact"
    assert O.pick(rows, "speed") == "fast"
    # balanced: within 10 % of 40 tok/s is ≥ 36; 'noisy' reaches it within its interval, 'close' does not
    assert O.pick(rows, "balanced") == "noisy"
    assert O.pick(rows[:3], "balanced") == "fast"
    # speed: the lower KLD among those whose interval overlaps the fastest's
    assert O.pick([dict(rows[0], decode_ci95=5.0), rows[1]], "speed") == "close"
    # no speed measured: KLD alone
    assert O.pick([{k: v for k, v in r.items() if not k.startswith("decode")} for r in rows]) == "exact"
    with pytest.raises(SlmError, match="choose one of balanced, quality, speed"):
        O.check_rule("fast")
    with pytest.raises(SlmError, match="int4-rule"):
        ExportArgs(gguf=[], onnx=["int4"], int4_rule="fastest")


def test_hqq_ties_the_embedding_to_the_quantized_head(searched, tiny_tok, tmp_path):
    """The ORT path shares the head's int4 blocks with the embedding (no fp32 table left behind)."""
    import onnx

    inp = _inputs(tiny_tok, tmp_path)
    folder = O.build("hqq", inp)
    g = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    ops = {n.op_type for n in g.node}
    assert "GatherBlockQuantized" in ops and "Transpose" not in ops and "MatMul" not in ops
    assert not [i for i in g.initializer if i.name == "lm_head.MatMul.weight"]


def test_hqq_u8_writes_the_int4_kernels_zero_point_layout(tiny_tok, tmp_path):
    """HQQ's float zero points become packed uint8 ones with accuracy_level 4 (the CPU int4 kernel's path),
    and the re-quantized weights dequantize to within one quantization step of the HQQ ones."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    inp = _inputs(tiny_tok, tmp_path)
    f_hqq, f_u8 = O.build("hqq", inp), O.build("hqq_u8", inp)
    nodes = {}
    for tag, f in (("hqq", f_hqq), ("u8", f_u8)):
        m = onnx.load(str(f / "model.onnx"))
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        nodes[tag] = {n.name: (n, inits) for n in m.graph.node if n.op_type == "MatMulNBits"}
    body = [k for k in nodes["u8"] if not k.startswith(HEAD)]
    assert body
    for name in body:
        n, inits = nodes["u8"][name]
        assert inits[n.input[3]].dtype == np.uint8
        assert {a.name: a.i for a in n.attribute}["accuracy_level"] == 4
        h, hinits = nodes["hqq"][name]
        assert hinits[h.input[3]].dtype != np.uint8  # what HQQ itself writes: float zero points
        cols = {a.name: a.i for a in n.attribute}["N"]
        zf = hinits[h.input[3]].reshape(cols, -1)
        packed = inits[n.input[3]].reshape(cols, -1)
        zu = np.stack([packed & 15, packed >> 4], -1).reshape(cols, -1)[:, :zf.shape[1]]
        assert np.abs(zu - np.clip(np.round(zf), 0, 15)).max() == 0
    # it still runs and predicts like the HF model more often than not on the tiny model's text
    assert rt.onnx_logits(f_u8, inp.score_ids[:8]).shape == (8, VOCAB)


def test_calibration_never_overlaps_the_scored_tokens():
    ids = list(range(3000))
    scored, windows = O.split_text(ids, 512)
    assert scored == ids[:O.SCORE_TOKENS]
    flat = [t for w in windows for t in w]
    assert flat and not set(flat) & set(scored) and len(windows) <= O.CALIB_WINDOWS


def test_named_candidate_is_the_only_one_built(tiny_tok, tmp_path):
    res = export(tiny_tok, tmp_path / "out",
                 ExportArgs(gguf=[], onnx=["int4:hqq"], validate=False, threads=1))
    r = res["onnx_int4"]
    assert r["kept"] == "hqq" and [c["name"] for c in r["candidates"]] == ["hqq"] and r["choice"] == "hqq"
    f = next(f for f in res["files"] if f["type"] == "int4")
    assert f["settings"]["candidate"] == "hqq" and {f.name: f.value
                                                    for f in res["figures"]}["onnx.int4.recipe"] == "hqq"
    record = json.loads((tmp_path / "out" / "slm.json").read_text())
    assert record["args"]["int4"] == "hqq" and record["result"]["onnx_int4"]["kept"] == "hqq"
    assert (tmp_path / "out" / "onnx-int4" / "model.onnx").is_file()


def test_int4_names_are_parsed_and_unknown_ones_refused():
    assert ExportArgs(gguf=[], onnx=["int4"]).int4 == "search"
    assert ExportArgs(gguf=[], onnx="int4:ALL,fp32").int4 == "all"
    a = ExportArgs(gguf=[], onnx=["int4:k_quant_mixed"])
    assert a.int4 == "k_quant_mixed" and a.onnx == ["int4"]
    with pytest.raises(SlmError, match="unknown ONNX int4 candidate 'awq'"):
        ExportArgs(gguf=[], onnx=["int4:awq"])


@pytest.mark.slow
def test_real_model_kept_int4_beats_the_builder_default(real_model, tmp_path):
    """SmolLM2-135M: the default search keeps, within the bound, a recipe no worse than the builder's default
    on KLD and about as fast as the fastest."""
    res = export(real_model, tmp_path / "out", ExportArgs(gguf=[], onnx=["int4"], validate=False, threads=1))
    r = res["onnx_int4"]
    rows = {c["name"]: c for c in r["candidates"]}
    kept = rows[r["kept"]]
    assert kept["fits"] and kept["weight_bytes"] <= r["bound_bytes"]
    assert r["kept"] == O.pick(r["candidates"], "balanced")
    # balanced: never worse than the builder default on KLD, never measurably slower than 0.9× the fastest
    assert kept["kld"] <= rows["default"]["kld"], rows
    fastest = max(c["decode_tok_s"] for c in rows.values() if c.get("fits") and c.get("decode_tok_s"))
    assert kept["decode_tok_s"] + (kept["decode_ci95"] or 0) >= 0.9 * fastest, rows
    # the bundled model is dequantized Q4_1: its blocks sit on the 16-level grid HQQ reproduces (its Q8_0
    # embedding does not)
    assert r["source_grid"]["on_grid"] and r["source_grid"]["share_on_grid"] > 0.8


def test_a_source_on_a_4_bit_grid_is_told_apart_from_a_continuous_one(tmp_path):
    """Weights dequantized from a Q4_1-like grid (d·q + m per block of 32) are flagged; continuous ones are
    not."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    cont = torch.randn(64, 128, generator=g)
    q = torch.randint(0, 16, (64 * 4, 32), generator=g).float()
    d, m = torch.rand(64 * 4, 1, generator=g), torch.randn(64 * 4, 1, generator=g)
    grid = (d * q + m).reshape(64, 128)
    for name, w, on in (("cont", cont, False), ("grid", grid, True)):
        (tmp_path / name).mkdir()
        save_file({"a.weight": w, "b.weight": w.clone(), "norm.weight": torch.ones(128)},
                  str(tmp_path / name / "model.safetensors"))
        got = O.source_grid(tmp_path / name)
        assert got["on_grid"] is on and got["tensors"] == 2, got
        assert got["share_on_grid"] == (1.0 if on else 0.0)
