"""Where the time goes: operator breakdowns per phase for llama.cpp (eval callback), torch (torch.profiler)
and onnxruntime-genai (onnxruntime's profiler), on tiny models."""

from __future__ import annotations

import pytest

from slm.profiling import ops


def _check(res: dict) -> None:
    for ph in ("prefill", "decode"):
        p = res["phases"][ph]
        assert set(p["shares"]) == set(ops.KINDS) and sum(p["shares"].values()) == pytest.approx(1.0)
        assert p["seconds"] > 0 and p["top"] and all(0 < s <= 1 for _, s in p["top"])
        assert p["shares"]["matmul"] > 0, (ph, p)  # weight matmuls are timed in both phases


def test_kinds_of_ops_by_name():
    assert ops.ggml_kind("MUL_MAT", "ffn_up") == "matmul" and ops.ggml_kind("MUL_MAT", "kq") == "attention"
    assert ops.ggml_kind("MUL", "attn_norm") == "norm" and ops.ggml_kind("RMS_NORM", "norm") == "norm"
    assert ops.ggml_kind("ROPE", "Qcur") == "rope" and ops.ggml_kind("SWIGLU", "ffn_swiglu") == "elementwise"
    assert ops.ggml_kind("FLASH_ATTN_EXT") == "attention" and ops.ggml_kind("GET_ROWS", "inp_embd") == "other"
    assert ops.torch_kind("aten::addmm") == "matmul" and ops.torch_kind("aten::_softmax") == "attention"
    assert ops.onnx_kind("MatMulNBits") == "matmul" and ops.onnx_kind("GroupQueryAttention") == "attention"
    assert (ops.onnx_kind("SkipSimplifiedLayerNormalization") == "norm"
            and ops.onnx_kind("RotaryEmbedding") == "rope")
    p = ops.phase_of({"a": 3.0, "b": 1.0}, lambda k: "matmul" if k == "a" else "other")
    assert p["shares"]["matmul"] == 0.75 and p["top"][0] == ["a", 0.75]


def test_llamacpp_eval_callback_breakdown(tiny, tmp_path):
    from slm.quant.gguf_write import write_gguf
    from slm.quant.llamacpp import LlamaCpp

    with LlamaCpp(write_gguf(tiny(), tmp_path / "t.gguf", "f32"), 256, 1) as b:
        res = ops.breakdown("llama.cpp", b, 32, 4)
        assert b.prefill(8) > 0  # the timed context is untouched by the diagnostic one
    _check(res)
    ops_seen = {op.split()[0] for ph in res["phases"].values() for op, _ in ph["top"]}
    assert "MUL_MAT" in ops_seen and "cb_eval" in res["how"] and res["n_prompt"] == 32


def test_torch_profiler_breakdown(tiny):
    from slm.profiling.torch_backend import Torch

    with Torch(tiny(), threads=1) as b:
        res = ops.breakdown("torch-cpu", b, 32, 4)
    _check(res)
    for ph in res["phases"].values():
        assert ph["shares"]["norm"] > 0 and ph["shares"]["rope"] > 0  # the ranges this pass opens were seen


def test_onnxruntime_profiler_breakdown(tiny, tmp_path):
    from slm.profiling.ortgenai import OrtGenai
    from tests.profiling.test_profile import _tiny_onnx

    with OrtGenai(_tiny_onnx(tiny, tmp_path), 1) as b:
        res = ops.breakdown("onnxruntime-genai", b, 16, 4)
    _check(res)
    assert "onnxruntime profiler" in res["how"]


def test_profile_with_ops_shows_the_breakdown_and_no_invented_energy(tiny, tmp_path, monkeypatch):
    import json

    from slm.cli import main
    from slm.profiling import energy
    from slm.quant.gguf_write import write_gguf

    # a machine with neither INA3221 nor RAPL
    monkeypatch.setattr(energy, "SYSFS", str(tmp_path / "no-sysfs"))
    g = write_gguf(tiny(), tmp_path / "t.gguf", "f32")
    out = tmp_path / "p"
    assert main(["profile", str(g), "--backends", "llama.cpp", "--pp", "16", "--tg", "4", "--depths", "0",
                 "--reps", "1", "--max-reps", "2", "--time-cap", "0.5", "--threads", "1", "--ops", "-o",
                 str(out)]) == 0
    res = json.loads((out / "profile.json").read_text())
    b = res["backends"]["llama.cpp"]
    _check(b["ops"])
    assert all(r["j_per_token"] is None
               and r["energy_how"].startswith("not measurable here") for r in b["rows"])
    rec = json.loads((out / "slm.json").read_text())
    assert not any(f["unit"] == "J/token" for f in rec["result"]["figures"])  # absent, never a zero
    html = (out / "index.html").read_text()
    assert "where the time goes" in html and "not measurable here" in html and "cb_eval" in html
