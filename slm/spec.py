"""What a Llama-family config means: shapes, parameter count, weight and KV-cache memory.

Supported: decoder-only models with RMSNorm, rotary positions and grouped-query attention — llama,
mistral, qwen2, qwen3, smollm3 (SmolLM/SmolLM2 are `llama`). Everything is derived from config.json
alone, so a model can be planned before it has weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slm.errors import SlmError
from slm.gguf import KV_CACHE_TYPES, kv_element_bytes

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "smollm3")
# Why each common non-Llama family is refused, so the message says something useful.
REFUSED = {
    "gpt2": "GPT-2 uses LayerNorm, learned absolute positions and fused c_attn weights",
    "gpt_neox": "GPT-NeoX uses LayerNorm and parallel attention/MLP blocks",
    "gptj": "GPT-J uses LayerNorm and parallel attention/MLP blocks",
    "opt": "OPT uses LayerNorm and learned absolute positions",
    "bloom": "BLOOM uses LayerNorm and ALiBi",
    "falcon": "Falcon uses LayerNorm and parallel blocks",
    "phi": "Phi uses LayerNorm and parallel blocks",
    "mixtral": "Mixtral is a mixture-of-experts model",
    "qwen2_moe": "Qwen2-MoE is a mixture-of-experts model",
    "qwen3_moe": "Qwen3-MoE is a mixture-of-experts model",
    "deepseek_v2": "DeepSeek-V2 is a mixture-of-experts model with MLA attention",
    "deepseek_v3": "DeepSeek-V3 is a mixture-of-experts model with MLA attention",
}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
CONTEXTS = (2048, 8192, 32768)


@dataclass(frozen=True)
class ModelSpec:
    """The numbers of one Llama-family architecture."""

    model_type: str  # config.model_type, one of SUPPORTED
    layers: int  # decoder blocks
    hidden: int  # residual width
    intermediate: int  # MLP width
    heads: int  # query heads
    kv_heads: int  # key/value heads (GQA groups)
    head_dim: int  # per-head width (explicit in Qwen3 configs, else hidden / heads)
    vocab: int  # embedding rows
    max_context: int  # max_position_embeddings
    tied: bool  # lm_head shares the embedding matrix
    attention_bias: bool  # q/k/v biases (Qwen2)
    qk_norm: bool  # per-head RMSNorm on q and k (Qwen3)
    dtype: str  # dtype the weights are stored in
    layer_types: list = field(default_factory=list)  # per-layer attention kinds, if the config has them

    # ---- derived numbers -------------------------------------------------------------------------------
    @property
    def gqa_ratio(self) -> float:
        return self.heads / self.kv_heads

    def layer_params(self) -> int:
        """Parameters of one decoder block: attention, MLP (gate/up/down) and two RMSNorms."""
        q = self.hidden * self.heads * self.head_dim
        kv = 2 * self.hidden * self.kv_heads * self.head_dim
        o = self.heads * self.head_dim * self.hidden
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.attention_bias else 0
        qk_norm = 2 * self.head_dim if self.qk_norm else 0
        mlp = 3 * self.hidden * self.intermediate
        return q + kv + o + bias + qk_norm + mlp + 2 * self.hidden

    @property
    def params(self) -> int:
        """Total parameters, the embedding counted once when lm_head is tied to it."""
        embed = self.vocab * self.hidden
        head = 0 if self.tied else self.vocab * self.hidden
        return embed + head + self.layers * self.layer_params() + self.hidden  # + final norm

    def weight_bytes(self, dtype: str | None = None) -> int:
        return self.params * DTYPE_BYTES[dtype or self.dtype]

    def kv_bytes_per_token(self, bytes_per_element: float = 2) -> float:
        """K and V for every layer: 2 × layers × kv_heads × head_dim × bytes (f16 → 2)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_element

    def memory_at(self, context: int, dtype: str | None = None, kv_bytes: float = 2) -> dict:
        """Weights + KV cache at one context length, with the KV share of the total."""
        w = self.weight_bytes(dtype)
        kv = self.kv_bytes_per_token(kv_bytes) * context
        return {"context": context, "weights": w, "kv_cache": int(kv), "total": int(w + kv), "kv_share": kv / (w + kv)}

    def kv_crossover_context(self, dtype: str | None = None, kv_bytes: float = 2) -> int:
        """The context at which the KV cache becomes as large as the weights."""
        return int(self.weight_bytes(dtype) // self.kv_bytes_per_token(kv_bytes)) + 1

    def summary(self) -> dict:
        """Everything `slm info` shows, as plain JSON-able data."""
        contexts = sorted({c for c in CONTEXTS if c < self.max_context} | {self.max_context})
        return {
            **asdict(self),
            "params": self.params,
            "gqa_ratio": self.gqa_ratio,
            "weight_bytes": {d: self.weight_bytes(d) for d in DTYPE_BYTES},
            "kv_bytes_per_token": {t: self.kv_bytes_per_token(kv_element_bytes(t)) for t in KV_CACHE_TYPES},
            "memory": [self.memory_at(c) for c in contexts],
            "kv_crossover_context": self.kv_crossover_context(),
        }


def check_supported(config: dict) -> str:
    """Return the model_type or raise with a one-line reason why this architecture is not Llama-family."""
    mt = config.get("model_type", "")
    if mt in SUPPORTED:
        if config.get("num_experts") or config.get("num_local_experts"):
            raise SlmError(f"{mt} config has experts: mixture-of-experts models are not supported (dense Llama-family only)")
        return mt
    reason = REFUSED.get(mt, "not a Llama-family decoder (RMSNorm, RoPE, GQA)")
    raise SlmError(f"unsupported architecture {mt or '<missing model_type>'!r}: {reason}; supported: {', '.join(SUPPORTED)}")


# The keys a Llama-family config.json must carry to define its shape (the rest have per-family defaults).
REQUIRED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")


def spec_from_config(config: dict) -> ModelSpec:
    """Build a ModelSpec from a config.json dict (after checking the architecture and the shape keys)."""
    mt = check_supported(config)
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise SlmError(f"config.json of this {mt} model lacks {', '.join(missing)}: not a complete checkpoint config; "
                       "re-save it with transformers (model.config.save_pretrained)")
    bad = [k for k in (*REQUIRED, "num_key_value_heads", "head_dim") if config.get(k) is not None
           and (not isinstance(config[k], int) or isinstance(config[k], bool) or config[k] < 1)]
    if bad:
        raise SlmError(f"config.json has {', '.join(f'{k}={config[k]!r}' for k in bad)}: each must be a positive "
                       "integer; fix the config")
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32").replace("torch.", "")
    return ModelSpec(
        model_type=mt,
        layers=config["num_hidden_layers"],
        hidden=hidden,
        intermediate=config["intermediate_size"],
        heads=heads,
        kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads,
        vocab=config["vocab_size"],
        max_context=config.get("max_position_embeddings", 2048),
        tied=bool(config.get("tie_word_embeddings", False)),  # every supported config class defaults to untied
        attention_bias=bool(config.get("attention_bias", mt == "qwen2")),
        qk_norm=mt == "qwen3",
        dtype=dtype if dtype in DTYPE_BYTES else "float32",
        layer_types=list(config.get("layer_types") or []),
    )


def load_spec(model: str | Path) -> ModelSpec:
    """ModelSpec of a checkpoint folder, a bare config.json or a GGUF file."""
    p = Path(model)
    if p.suffix.lower() == ".gguf":
        from slm.gguf import spec_from_gguf

        return spec_from_gguf(p)
    cfg = p / "config.json" if p.is_dir() else p
    if not cfg.is_file():
        raise SlmError(f"no config.json at {p}: pass an HF checkpoint folder (or `slm import` a GGUF first)")
    try:
        config = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise SlmError(f"{cfg} is not valid JSON ({e}); re-export the checkpoint") from None
    return spec_from_config(config)
