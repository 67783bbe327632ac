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
from slm.figure import Figure, analytic
from slm.gguf import KV_CACHE_TYPES, kv_element_bytes, read_header

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
    "phi3": "Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj, and uses LongRoPE; export it "
            "with llama.cpp's own converter",
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

    def layer_matmul_params(self) -> int:
        """Weights of one block that take part in matrix products: q, k, v, o and the MLP's gate/up/down
        (norms and biases are element-wise: their FLOPs are negligible and not counted)."""
        h, hd = self.hidden, self.head_dim
        return 2 * h * self.heads * hd + 2 * h * self.kv_heads * hd + 3 * h * self.intermediate

    def block_forward_flops(self, context: float) -> float:
        """Forward FLOPs per token of one block attending over `context` earlier tokens: 2 × matmul weights (a
        multiply and an add each) + attention's QKᵀ and A·V, 4 × heads × head_dim × context (Kaplan et al.
        2020, table 1; PaLM's 12·L·H·Q·T for forward + backward, Chowdhery et al. 2022, App. B; the causal
        halving not applied)."""
        return 2 * self.layer_matmul_params() + 4 * self.heads * self.head_dim * context

    def head_flops(self) -> float:
        """Forward FLOPs per token of the LM head (vocab × hidden; the embedding lookup is free)."""
        return 2.0 * self.vocab * self.hidden

    def forward_flops(self, context: float = 0, head: bool = True) -> float:
        """Forward FLOPs per token of the whole model at `context` — the one FLOP model that training's MFU
        (train/flops.py) and the roofline (profiling/roofline.py) both use."""
        return self.layers * self.block_forward_flops(context) + (self.head_flops() if head else 0.0)

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
        return {"context": context, "weights": w, "kv_cache": int(kv), "total": int(w + kv),
                "kv_share": kv / (w + kv)}

    def kv_crossover_context(self, dtype: str | None = None, kv_bytes: float = 2) -> int:
        """The context at which the KV cache becomes as large as the weights."""
        return int(self.weight_bytes(dtype) // self.kv_bytes_per_token(kv_bytes)) + 1

    def figures(self, prefix: str = "model.") -> list[Figure]:
        """The shape's key figures (analytic): parameters, layers, KV heads, fp32 weights, KV bytes per token
        and the context where the f16 KV cache outgrows the weights — what `slm info` reports and what compare
        shows for a folder that is a model, so before/after a surgery line up."""
        return [analytic(f"{prefix}params", "parameters", self.params, "parameters", group="size", key=True),
                analytic(f"{prefix}layers", "layers", self.layers, "layers", key=True),
                analytic(f"{prefix}kv_heads", "KV heads", self.kv_heads, "heads"),
                analytic(f"{prefix}weights_fp32", "weights (fp32)", self.weight_bytes("float32"), "bytes",
                         "lower", "size"),
                analytic(f"{prefix}kv_bytes_per_token", "KV cache per token (f16)",
                         self.kv_bytes_per_token(2),
                         "bytes", "lower", "memory", key=True),
                analytic(f"{prefix}kv_crossover", "context where the f16 KV cache outgrows the weights",
                         self.kv_crossover_context(), "tokens", "higher", "memory")]

    def shape_differences(self, other: ModelSpec) -> list[str]:
        """The fields that make two checkpoints' weights incompatible (`name a vs b`), empty when one can
        load the other's tensors: family, depth, widths, heads, vocabulary, tying, biases, q/k norms."""
        keys = ("model_type", "layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab",
                "tied", "attention_bias", "qk_norm")
        return [f"{k} {getattr(self, k)} vs {getattr(other, k)}" for k in keys
                if getattr(self, k) != getattr(other, k)]

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
            raise SlmError(f"{mt} config has experts: mixture-of-experts models are not supported (dense "
                           "Llama-family only)")
        return mt
    reason = REFUSED.get(mt, "not a Llama-family decoder (RMSNorm, RoPE, GQA)")
    raise SlmError(f"unsupported architecture {mt or '<missing model_type>'!r}: {reason}; supported: "
                   f"{', '.join(SUPPORTED)}")


# The keys a Llama-family config.json must carry to define its shape (the rest have per-family defaults).
REQUIRED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")


_COUNTS = (*REQUIRED, "num_key_value_heads", "head_dim", "max_position_embeddings")
_FLAGS = ("tie_word_embeddings", "attention_bias")


def _check_values(config: dict) -> None:
    """Every config value the spec uses has the type and range it must have — JSON allows NaN, Infinity,
    "4096" and -1 where a count belongs, and each would give a wrong figure (a negative KV share, a GQA ratio
    of 2.25) rather than an error later."""
    bad = [k for k in _COUNTS if config.get(k) is not None
           and (not isinstance(config[k], int) or isinstance(config[k], bool) or config[k] < 1)]
    bad += [k for k in _FLAGS if config.get(k) is not None and not isinstance(config[k], bool)]
    if bad:
        raise SlmError(f"config.json has {', '.join(f'{k}={config[k]!r}' for k in bad)}: each must be a "
                       "positive integer (a flag: true or false); fix the config")
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    if heads % kv:
        raise SlmError(f"config.json has num_key_value_heads={kv}, which does not divide "
                       f"num_attention_heads={heads}: grouped-query attention needs a whole number of query "
                       "heads per KV head; fix the config")
    if not config.get("head_dim") and config["hidden_size"] % heads:
        raise SlmError(f"config.json has hidden_size={config['hidden_size']}, not a multiple of "
                       f"num_attention_heads={heads}, and no head_dim: fix the config")
    if not isinstance(config.get("layer_types") or [], list):
        raise SlmError(f"config.json has layer_types={config['layer_types']!r}: it must be a list; fix the "
                       "config")


def spec_from_config(config: dict) -> ModelSpec:
    """Build a ModelSpec from a config.json dict (after checking the architecture and the shape keys)."""
    mt = check_supported(config)
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise SlmError(f"config.json of this {mt} model lacks {', '.join(missing)}: not a complete "
                       "checkpoint config; re-save it with transformers (model.config.save_pretrained)")
    _check_values(config)
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
        # every supported config class defaults to untied
        tied=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", mt == "qwen2")),
        qk_norm=mt == "qwen3",
        dtype=dtype if dtype in DTYPE_BYTES else "float32",
        layer_types=list(config.get("layer_types") or []),
    )


# GGUF architecture name → config model_type
_GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "smollm3": "smollm3"}


def spec_from_gguf(path: Path | str) -> ModelSpec:
    """A ModelSpec from a GGUF's metadata (llama-family keys), so a GGUF alone can be analysed. Every header
    field used is checked: a count must be a positive integer and the context a finite one, or the file is
    refused in one line naming the field."""
    h = read_header(path)
    arch = h.architecture
    name = Path(path).name

    def count(key: str, default=None, required: bool = True) -> int | None:
        v = h.metadata.get(f"{arch}.{key}", default)
        if v is None and not required:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SlmError(f"{name}: header field {arch}.{key} is {v!r}, not a positive integer: the file is "
                           "damaged or not a llama-family GGUF; re-export it")
        return v

    if h.metadata.get(f"{arch}.block_count") is None:
        raise SlmError(f"{name} has no {arch or '<no architecture>'}.block_count: not a llama-family GGUF; "
                       "pass a GGUF exported from a Llama-family model")
    mt = check_supported({"model_type": _GGUF_ARCH.get(arch, arch)})
    heads, hidden = count("attention.head_count"), count("embedding_length")
    kv_heads = count("attention.head_count_kv", heads)
    if heads % kv_heads:
        raise SlmError(f"{name}: {kv_heads} KV heads do not divide {heads} query heads: the file is damaged")
    vocab = count("vocab_size", required=False) or h.array_lengths.get("tokenizer.ggml.tokens", 0)
    if not vocab:
        raise SlmError(f"{name} states no vocabulary size and has no token list: re-export it")
    names = {t.name for t in h.tensors}
    return ModelSpec(
        model_type=mt, layers=count("block_count"), hidden=hidden, intermediate=count("feed_forward_length"),
        heads=heads, kv_heads=kv_heads, head_dim=count("attention.key_length", hidden // heads),
        vocab=vocab, max_context=count("context_length", 2048), tied="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names, qk_norm="blk.0.attn_q_norm.weight" in names,
        # as from a config.json without torch_dtype: quantized files have no torch dtype; `contents` has real
        # bytes
        dtype="float32",
    )


def load_spec(model: str | Path) -> ModelSpec:
    """ModelSpec of a checkpoint folder, a bare config.json or a GGUF file."""
    p = Path(model)
    if p.suffix.lower() == ".gguf":
        return spec_from_gguf(p)
    cfg = p / "config.json" if p.is_dir() else p
    if not cfg.is_file():
        raise SlmError(f"no config.json at {p}: pass an HF checkpoint folder (or `slm import` a GGUF first)")
    try:
        config = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise SlmError(f"{cfg} is not valid JSON ({e}); re-export the checkpoint") from None
    return spec_from_config(config)
