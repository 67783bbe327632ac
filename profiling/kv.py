"""KV-cache memory: analytic bytes per token from the architecture, what llama.cpp really allocates, and the
share of memory the cache takes as the context grows.

Analytic: 2 (K and V) × layers × kv_heads × head_dim × bytes per element (design.md). Quantized cache types are
stored in ggml blocks of 32 values: q8_0 = 32 int8 + one f16 scale = 34 bytes, q4_0 = 16 bytes of nibbles + one
f16 scale = 18 bytes (ggml-common.h block_q8_0 / block_q4_0), so 34/32 and 18/32 bytes per element.
"""

from __future__ import annotations

from pathlib import Path

from slm.errors import SlmError
from slm.spec import ModelSpec, spec_from_config

BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
LLAMA_CTX_PAD = 256  # llama.cpp rounds the cache size up to a multiple of 256 cells (llama-context.cpp, n_ctx pad)


def kv_bytes(spec: ModelSpec, tokens: int, cache_type: str = "f16") -> float:
    if cache_type not in BYTES_PER_ELEMENT:
        raise SlmError(f"unknown KV cache type {cache_type!r}: choose one of {', '.join(BYTES_PER_ELEMENT)}")
    return spec.kv_bytes_per_token(BYTES_PER_ELEMENT[cache_type]) * tokens


def llama_cells(n_ctx: int) -> int:
    """Cells llama.cpp allocates for a requested context."""
    return -(-n_ctx // LLAMA_CTX_PAD) * LLAMA_CTX_PAD


def read_gguf(path: Path):
    """gguf-py's reader, with a corrupt file turned into one clear error."""
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as e:  # gguf-py raises IndexError/ValueError/struct errors on damaged headers
        raise SlmError(f"cannot read the GGUF header of {Path(path).name} ({type(e).__name__}: {e}): the file is "
                       "damaged or truncated; re-export it") from None


def spec_from_gguf(path: Path) -> ModelSpec:
    """A ModelSpec from a GGUF's metadata (llama-family keys), so a GGUF alone can be analysed."""
    r = read_gguf(path)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.")}
    arch = f.get("general.architecture", "")
    names = {t.name for t in r.tensors}

    def g(key, default=None):
        return f.get(f"{arch}.{key}", default)

    if g("block_count") is None:
        raise SlmError(f"{Path(path).name} has no {arch}.block_count: not a llama-family GGUF")
    heads = g("attention.head_count")
    hidden = g("embedding_length")
    vocab = g("vocab_size") or len(r.fields["tokenizer.ggml.tokens"].data)
    config = {
        "model_type": {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "smollm3": "smollm3"}.get(arch, arch),
        "num_hidden_layers": g("block_count"), "hidden_size": hidden, "intermediate_size": g("feed_forward_length"),
        "num_attention_heads": heads, "num_key_value_heads": g("attention.head_count_kv", heads),
        "head_dim": g("attention.key_length", hidden // heads), "vocab_size": vocab,
        "max_position_embeddings": g("context_length", 2048), "tie_word_embeddings": "output.weight" not in names,
    }
    return spec_from_config(config)


def contexts_to(max_context: int, start: int = 512) -> list[int]:
    """512, 1024, … up to and including the model's max context."""
    out, c = [], start
    while c < max_context:
        out.append(c)
        c *= 2
    return out + [max_context]


def share_curve(spec: ModelSpec, weight_bytes: float, cache_type: str = "f16", compute_bytes: float = 0.0) -> dict:
    """Analytic memory at each context from 512 to max: weights, KV, (constant) compute buffers, KV share, and the
    context at which the KV cache overtakes the weights."""
    rows = []
    for c in contexts_to(spec.max_context):
        kv = kv_bytes(spec, c, cache_type)
        total = weight_bytes + kv + compute_bytes
        rows.append({"context": c, "weights": weight_bytes, "kv_cache": kv, "compute": compute_bytes, "total": total,
                     "kv_share": kv / total})
    per_tok = kv_bytes(spec, 1, cache_type)
    return {"cache_type": cache_type, "kv_bytes_per_token": per_tok, "rows": rows,
            "crossover_context": int(weight_bytes // per_tok) + 1,
            "crossover_within_max": weight_bytes / per_tok < spec.max_context}


def measure_llamacpp(gguf: Path, spec: ModelSpec, contexts: list[int], cache_type: str, threads: int) -> list[dict]:
    """Create a llama.cpp context at each size and record what it allocates, beside the analytic KV bytes."""
    from slm.profiling.llamacpp import LlamaCpp
    from slm.profiling.protocol import rss_bytes

    rows = []
    for c in contexts:
        with LlamaCpp(gguf, c, threads, kv_type=cache_type) as b:
            m = b.memory()
            cells = m.get("kv_cells", llama_cells(c))
            analytic = kv_bytes(spec, cells, cache_type)
            rows.append({"context": c, "cells": cells, "cache_type": cache_type, "weights": m["weights"],
                         "kv_cache": m.get("kv_cache", 0.0), "kv_analytic": analytic, "compute": m["compute"],
                         "output": m["output"], "rss": rss_bytes(),
                         "kv_rel_err": (m.get("kv_cache", 0.0) - analytic) / analytic})
    return rows
