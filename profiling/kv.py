"""KV-cache memory: analytic bytes per token from the architecture, what llama.cpp really allocates, and the
share of memory the cache takes as the context grows.

Analytic: 2 (K and V) × layers × kv_heads × head_dim × bytes per element, the element sizes from
slm.gguf (f16 2 bytes; q8_0 and q4_0 are ggml blocks of 32 values: 34/32 and 18/32 bytes per element).
"""

from __future__ import annotations

from pathlib import Path

from slm.gguf import kv_element_bytes
from slm.profiling.protocol import rss_bytes
from slm.quant.llamacpp import LlamaCpp
from slm.spec import ModelSpec

# llama.cpp rounds the cache size up to a multiple of 256 cells (llama-context.cpp, n_ctx pad)
LLAMA_CTX_PAD = 256


def kv_bytes(spec: ModelSpec, tokens: int, cache_type: str = "f16") -> float:
    return spec.kv_bytes_per_token(kv_element_bytes(cache_type)) * tokens


def llama_cells(n_ctx: int) -> int:
    """Cells llama.cpp allocates for a requested context."""
    return -(-n_ctx // LLAMA_CTX_PAD) * LLAMA_CTX_PAD


def contexts_to(max_context: int, start: int = 512) -> list[int]:
    """512, 1024, … up to and including the model's max context."""
    out, c = [], start
    while c < max_context:
        out.append(c)
        c *= 2
    return out + [max_context]


def share_curve(spec: ModelSpec, weight_bytes: float, cache_type: str = "f16",
                compute_bytes: float = 0.0) -> dict:
    """Analytic memory at each context from 512 to max: weights, KV, (constant) compute buffers, KV share, and
    the context at which the KV cache overtakes the weights."""
    rows = []
    for c in contexts_to(spec.max_context):
        kv = kv_bytes(spec, c, cache_type)
        total = weight_bytes + kv + compute_bytes
        rows.append({"context": c, "weights": weight_bytes, "kv_cache": kv, "compute": compute_bytes,
                     "total": total, "kv_share": kv / total})
    per_tok = kv_bytes(spec, 1, cache_type)
    return {"cache_type": cache_type, "kv_bytes_per_token": per_tok, "rows": rows,
            "crossover_context": int(weight_bytes // per_tok) + 1,
            "crossover_within_max": weight_bytes / per_tok < spec.max_context}


def measure_llamacpp(gguf: Path, spec: ModelSpec, contexts: list[int], cache_type: str,
                     threads: int) -> list[dict]:
    """Create a llama.cpp context at each size and record what it allocates, beside the analytic KV bytes."""

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
