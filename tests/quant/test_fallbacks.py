"""slm.gguf's shape-only prediction of llama.cpp's per-tensor types and fallbacks, against the real
quantizer."""

from __future__ import annotations

import dataclasses

import pytest

from slm.gguf import read_header
from slm.gguf_mix import fallbacks_for, predict_types, types_that_hold
from slm.quant.gguf_write import write_gguf
from slm.quant.quantize import inspect_gguf, quantize
from slm.spec import ModelSpec, load_spec

# SmolLM2-135M's shape (the bundled model): hidden 576 = 2.25 × 256, intermediate 1536 = 6 × 256
SMOLLM2 = ModelSpec("llama", 30, 576, 1536, 9, 3, 64, 49152, 8192, True, False, False, "bfloat16")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A tiny llama whose attention rows (96) fit legacy blocks of 32 but not K-quants' 256, while ffn_down's
    rows (256) fit both; 12 layers exercise the q4_k_m/q5_k_m per-layer mix; untied, so output.weight
    exists."""
    from tests.conftest import make_tiny  # noqa: PLC0415

    d = make_tiny(tmp_path_factory.mktemp("mixed") / "mixed", "llama", hidden_size=96, intermediate_size=256,
                  num_attention_heads=3, num_key_value_heads=1, num_hidden_layers=12)
    return d, write_gguf(d, d.parent / "mixed-f32.gguf", "f32")


@pytest.mark.parametrize("qtype", ["q6_k", "q4_k_m", "q5_k_m", "q3_k_m", "q2_k", "q4_0", "iq4_xs", "q8_0"])
def test_prediction_matches_llama_cpp(mixed, tmp_path, qtype):
    d, f32 = mixed
    log = quantize(f32, tmp_path / f"m-{qtype}.gguf", qtype, threads=1)
    real = inspect_gguf(tmp_path / f"m-{qtype}.gguf", qtype, log)
    spec = load_spec(d)
    pred = fallbacks_for(spec, qtype)
    assert {f["tensor"] for f in pred["fallbacks"]} == {f["tensor"] for f in real["fallbacks"]}
    assert {(f["tensor"], f["wanted"], f["type"]) for f in pred["fallbacks"]} == \
        {(f["tensor"], f["wanted"], f["type"]) for f in real["fallbacks"]}
    # every tensor's type, hence the bytes and bits per weight, as in the file
    header = read_header(tmp_path / f"m-{qtype}.gguf")
    assert {r["tensor"]: r["type"]
            for r in predict_types(spec, qtype)} == {t.name: t.ggml_type for t in header.tensors}
    assert pred["tensor_bytes"] == real["tensor_bytes"]
    assert pred["bits_per_weight"] == pytest.approx(real["bits_per_weight"])


def test_bundled_shape_q6_k_falls_back():
    """hidden 576: q/k/v/o/gate/up of every layer fall back to Q8_0 (6 per layer: 180 on 30 layers, the 216 of
    the 36-layer expansion the demo exports); the tied embedding is written Q8_0 by the output rule, not a
    fallback."""
    r = fallbacks_for(SMOLLM2, "q6_k")
    assert len(r["fallbacks"]) == 180 and not r["holds"]
    assert {f["type"] for f in r["fallbacks"]} == {"Q8_0"}
    assert r["by_type"]["Q6_K"]["tensors"] == 30  # only ffn_down (rows of 1536) keeps Q6_K
    assert 8.0 < r["bits_per_weight"] < 8.5 and r["nominal_bpw"] == pytest.approx(6.5625)
    assert len(fallbacks_for(dataclasses.replace(SMOLLM2, layers=36), "q6_k")["fallbacks"]) == 216


def test_types_that_hold():
    assert types_that_hold(SMOLLM2) == ["q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl"]
    wide = dataclasses.replace(SMOLLM2, hidden=512, heads=8, head_dim=64)
    assert {"q6_k", "q4_k_m", "q3_k_m", "q2_k"} <= set(types_that_hold(wide))
    assert fallbacks_for(wide, "q6_k")["fallbacks"] == []


def test_export_and_expand_warn_before_work(tiny, tmp_path, capsys):
    """hidden 64 is no multiple of 256: export's prepare() and expand say so on stderr, once, before
    writing."""
    from slm.quant.export import ExportArgs, prepare
    from slm.surgery.expand import ExpandArgs, expand

    d = tiny("llama")
    capsys.readouterr()  # the fixture's own progress output
    prepare(d, tmp_path / "out", ExportArgs(gguf=["q6_k", "q8_0"], validate=False))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "q6_k" in err and "q8_0:" not in err
    assert "types that hold on this shape: q8_0" in err
    assert not (tmp_path / "out").exists()
    prepare(d, tmp_path / "out", ExportArgs(gguf=["q8_0"], validate=False))
    assert capsys.readouterr().err == ""  # a type that holds: no warning
    expand(d, tmp_path / "x", ExpandArgs(groups=3, copies=1, parity=False))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "q4_k_m" in err and "bits/weight" in err
