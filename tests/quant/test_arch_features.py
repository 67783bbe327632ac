"""The family's architecture features in the GGUF writer: RoPE scaling (llama3's rope_freqs, linear, yarn),
refusals, SmolLM3's NoPE layers, sliding windows — each checked by logits against HF (fast, tiny models)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from slm.errors import SlmError
from slm.io import load_model
from slm.quant import runtimes as rt
from slm.quant.gguf_arch import plan_arch, rope_freqs
from slm.quant.gguf_write import write_gguf

# Positions well beyond the original context of 64, where each scaling changes the frequencies.
N_POS = 300
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64, "rope_theta": 500000.0}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0}
LINEAR = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}


def _rel_err(model_dir, gguf, ids) -> float:
    model = load_model(model_dir)
    with rt.open_gguf(gguf, len(ids) + 16, exact=True, threads=1) as llm:
        return rt.compare_logits([rt.hf_logits(model, ids)], [llm.logits(ids)])["max_rel_err"]


@pytest.mark.parametrize("kind,rope", [("llama", LLAMA3), ("llama", YARN), ("llama", LINEAR),
                                       ("qwen2", YARN)], ids=["llama3", "yarn", "linear", "qwen2-yarn"])
def test_rope_scaling_matches_hf_beyond_original_context(tiny, tmp_path, kind, rope):
    """f32 parity over 300 positions; the control (same weights, scaling removed) must differ, so the test
    sees the scaling."""
    d = tiny(kind, tied=True, num_hidden_layers=2, max_position_embeddings=512, rope_scaling=dict(rope))
    ids = np.random.default_rng(0).integers(0, 256, N_POS).tolist()
    assert _rel_err(d, write_gguf(d, tmp_path / "m.gguf", "f32"), ids) < 1e-4
    ctrl = tmp_path / "control"
    shutil.copytree(d, ctrl)
    cfg = json.loads((ctrl / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": rope["rope_theta"]}
    (ctrl / "config.json").write_text(json.dumps(cfg))
    assert _rel_err(d, write_gguf(ctrl, tmp_path / "ctrl.gguf", "f32"), ids) > 1e-3


def test_llama3_factors_follow_transformers():
    """rope_freqs = trained inv_freq / transformers' llama3 inv_freq, pair by pair."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=512,
                      rope_scaling=dict(LLAMA3))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = 1.0 / (LLAMA3["rope_theta"] ** (torch.arange(0, 16, 2).float() / 16))
    np.testing.assert_allclose(rope_freqs(LLAMA3, 16), (plain / scaled).numpy(), rtol=1e-5)
    assert rope_freqs(YARN, 16) is None


@pytest.mark.parametrize("rtype,words", [("longrope", "phi3"), ("proportional", "transformers"),
                                         ("made_up", "not known")])
def test_unsupported_rope_is_refused_in_one_line(rtype, words):
    with pytest.raises(SlmError, match=words) as e:
        plan_arch({"model_type": "llama", "rope_scaling": {"rope_type": rtype, "factor": 2.0}})
    assert rtype in str(e.value) and "\n" not in str(e.value)


def test_dynamic_ntk_is_exact_only_within_the_original_context():
    p = plan_arch({"model_type": "llama", "max_position_embeddings": 256,
                   "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})
    assert p.exact_ctx == 256 and "dynamic" in p.warning()


def test_smollm3_nope_pattern_must_be_llama_cpps():
    """llama.cpp skips RoPE on every 4th layer; any other pattern is refused, naming the layers."""
    base = {"model_type": "smollm3", "num_hidden_layers": 8}
    assert plan_arch({**base, "no_rope_layers": [1, 1, 1, 0, 1, 1, 1, 0]}).arch == "smollm3"
    with pytest.raises(SlmError, match=r"layers \[3, 4\]"):
        plan_arch({**base, "no_rope_layers": [1, 1, 1, 1, 0, 1, 1, 0]})


def test_sliding_window_limits_exactness():
    assert plan_arch({"model_type": "mistral", "sliding_window": 32,
                      "max_position_embeddings": 256}).exact_ctx == 32
    assert plan_arch({"model_type": "mistral", "sliding_window": 4096,
                      "max_position_embeddings": 256}).exact_ctx is None
    q = {"model_type": "qwen2", "sliding_window": 32, "max_position_embeddings": 256}
    assert plan_arch({**q, "layer_types": ["full_attention"] * 2}).exact_ctx is None
    assert plan_arch({**q, "layer_types": ["full_attention", "sliding_attention"]}).exact_ctx == 32
    old = {**q, "use_sliding_window": True, "num_hidden_layers": 4}  # no layer_types: max_window_layers
    assert plan_arch({**old, "max_window_layers": 2}).exact_ctx == 32
    assert plan_arch({**old, "max_window_layers": 4}).exact_ctx is None


def test_mistral_sliding_window_warned_validated_within_and_flagged_beyond(tiny, tmp_path, capsys):
    """llama.cpp's llama architecture has no sliding window: the export says so before work, validation
    passes within the window and flags the difference beyond it."""
    from slm.quant.export import ExportArgs, export

    d = tiny("mistral", num_hidden_layers=2, sliding_window=32, max_position_embeddings=256)
    res = export(d, tmp_path / "out", ExportArgs(gguf=["f32"], n_ctx=64, threads=1))
    assert "within 32 tokens" in capsys.readouterr().err
    v = res["validation"]
    assert v["exact_ctx"] == 32 and v["n_ctx"] == 32
    assert v["gguf"]["f32"]["max_rel_err"] < 1e-4 and not v.get("failed")
    beyond = v["gguf"]["f32"]["beyond_exact_ctx"]
    assert beyond["from"] == 32 and beyond["max_rel_err"] > 1e-3
    assert "beyond 32 tokens" in v["flagged"]["gguf f32"]
    assert next(f for f in res["figures"] if f.name == "validation_flags").value == 1
