"""What of an HF config llama.cpp can run, decided before any byte is written: the GGUF architecture, the
RoPE scaling (and its extra `rope_freqs` tensor for Llama-3.x), NoPE layers, and sliding-window attention.

Sources: llama.cpp's converter (convert_hf_to_gguf.py: LlamaModel.generate_extra_tensors writes the llama3
frequency factors; linear and yarn become rope.scaling.* keys) and its model loader (llama-model.cpp:
`llama`, `qwen2` and `qwen3` read no sliding window; `smollm3` skips RoPE on every 4th layer, a constant
`n_no_rope_layer_step = 4` that no GGUF key changes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from slm.errors import SlmError

# HF model_type → GGUF architecture name. SmolLM/SmolLM2 and Mistral checkpoints are `llama` in HF too.
ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "smollm3": "smollm3"}
# RoPE types written exactly; `dynamic` is written as plain RoPE, exact up to the original context (below)
ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic")
# Why the other transformers RoPE types are refused, and what would run them.
ROPE_REFUSED = {
    "longrope": "llama.cpp applies LongRoPE's long/short factors only in its phi3 architecture; export the "
                "model with llama.cpp's own converter as Phi-3, or run it with transformers",
    "proportional": "llama.cpp has no proportional RoPE for these architectures; run it with transformers",
}
# llama.cpp's smollm3 graph: layer il skips RoPE when (il + 1) % 4 == 0 (models/smollm3.cpp)
SMOLLM3_NOPE_STEP = 4


@dataclass
class ArchPlan:
    """How one config becomes a GGUF: the architecture, its RoPE, and where llama.cpp's output stops being
    the HF model's."""

    arch: str  # GGUF architecture name
    rope: dict = field(default_factory=dict)  # RoPE parameters (rope_theta, rope_type, factor, ...)
    exact_ctx: int | None = None  # context up to which llama.cpp computes what HF does (None: all of it)
    reason: str = ""  # why outputs differ beyond exact_ctx

    def __post_init__(self):
        if self.arch not in set(ARCHS.values()):
            raise SlmError(f"unknown GGUF architecture {self.arch!r}")
        if self.exact_ctx is not None and self.exact_ctx < 1:
            raise SlmError(f"exact_ctx must be a positive token count, got {self.exact_ctx}")

    def warning(self) -> str | None:
        """The line said before any work when llama.cpp will differ from HF beyond some length."""
        if self.exact_ctx is None:
            return None
        return (f"warning: {self.reason}: the GGUF matches the HF model only within {self.exact_ctx} tokens "
                f"of context; outputs differ beyond it (validation checks within it and flags beyond it)")


def rope_params(config: dict) -> dict:
    """RoPE settings: transformers 5 keeps them in `rope_parameters`, older configs in rope_theta +
    rope_scaling."""
    if config.get("rope_parameters"):
        rp = dict(config["rope_parameters"])
        if "full_attention" in rp and isinstance(rp["full_attention"], dict):  # per-layer-type parameters
            rp = dict(rp["full_attention"])
        return rp
    rope = {"rope_theta": config.get("rope_theta", 10000.0), **(config.get("rope_scaling") or {})}
    if "type" in rope and "rope_type" not in rope:  # the pre-4.45 key name
        rope["rope_type"] = rope.pop("type")
    return rope


def plan_arch(config: dict) -> ArchPlan:
    """The ArchPlan of a config, or a one-line SlmError naming what cannot be exported and what would run
    it."""
    mt = config.get("model_type", "")
    if mt not in ARCHS:
        raise SlmError(f"cannot export architecture {mt or '<missing model_type>'!r} to GGUF: supported are "
                       f"{', '.join(sorted(ARCHS))}")
    if config.get("num_experts") or config.get("num_local_experts"):
        raise SlmError(f"{mt} config has experts: mixture-of-experts export is not supported")
    rope = rope_params(config)
    rtype = rope.get("rope_type") or "default"
    if rtype in ROPE_REFUSED:
        raise SlmError(f"RoPE type {rtype!r} cannot be written to GGUF: {ROPE_REFUSED[rtype]}")
    if rtype not in ROPE_TYPES:
        raise SlmError(f"RoPE type {rtype!r} is not known to the GGUF writer (it writes "
                       f"{', '.join(ROPE_TYPES)}); run the model with transformers")
    if mt == "smollm3":
        _check_nope(config)
    limits = []
    if rtype == "dynamic":
        # HF's dynamic NTK keeps the trained frequencies until the sequence outgrows max_position_embeddings
        # (modeling_rope_utils._compute_dynamic_ntk_parameters); llama.cpp has no dynamic scaling.
        n = rope.get("original_max_position_embeddings") or config.get("max_position_embeddings", 2048)
        limits.append((n, f"llama.cpp has no dynamic-NTK RoPE (transformers rescales beyond {n} tokens)"))
    window = sliding_window(config)
    if window is not None:
        limits.append((window, f"llama.cpp's {ARCHS[mt]} architecture has no sliding-window attention "
                               f"(this {mt} model attends over a window of {window} tokens)"))
    exact, reason = min(limits) if limits else (None, "")
    return ArchPlan(ARCHS[mt], rope, exact, reason)


def sliding_window(config: dict) -> int | None:
    """The attention window when some layer of this config uses one shorter than its context, else None
    (HF Mistral: every layer when sliding_window is set; Qwen2/Qwen3/SmolLM3: the `sliding_attention` entries
    of layer_types, which their configs derive from use_sliding_window and max_window_layers)."""
    w = config.get("sliding_window")
    if not isinstance(w, int) or w <= 0 or w >= config.get("max_position_embeddings", 2048):
        return None
    if config.get("model_type") == "mistral":
        return w
    types = config.get("layer_types")
    if types is None and config.get("use_sliding_window"):  # configs saved before layer_types existed
        n = config.get("num_hidden_layers", 0)
        return w if config.get("max_window_layers", n) < n else None
    return w if "sliding_attention" in (types or []) else None


def _check_nope(config: dict) -> None:
    """llama.cpp's smollm3 hard-codes which layers skip RoPE; a config that differs (an expanded or pruned
    SmolLM3) would run with RoPE in the wrong layers, so it is refused."""
    n = config["num_hidden_layers"]
    want = [int((i + 1) % SMOLLM3_NOPE_STEP != 0) for i in range(n)]
    have = config.get("no_rope_layers") or want
    if list(have) != want:
        bad = [i for i, (a, b) in enumerate(zip(have, want)) if a != b]
        raise SlmError(f"this SmolLM3 has RoPE on/off per layer {list(have)}, but llama.cpp's smollm3 skips "
                       f"RoPE exactly on every {SMOLLM3_NOPE_STEP}th layer (layers {bad} differ): keep the "
                       "NoPE layers at every 4th position (e.g. expand with --groups so copies keep the "
                       "pattern) or run the model with transformers")


def rope_freqs(rope: dict, head_dim: int) -> np.ndarray | None:
    """Llama-3.x's per-frequency divisors as llama.cpp reads them (`rope_freqs.weight`, one per rotated pair):
    the converter's LlamaModel.generate_extra_tensors, the same rule as transformers'
    _compute_llama3_parameters (wavelengths above original_ctx / low_freq_factor are slowed by `factor`, below
    original_ctx / high_freq_factor kept, smoothly blended in between). None for other RoPE types."""
    if (rope.get("rope_type") or "default") != "llama3":
        return None
    base = rope.get("rope_theta", 10000.0)
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / (base ** (i / head_dim))
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)
