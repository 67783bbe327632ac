"""KV-cache memory: analytic bytes per token from the architecture, what llama.cpp really allocates, and the
share of memory the cache takes as the context grows.

Analytic: 2 (K and V) × layers × kv_heads × head_dim × bytes per element, the element sizes from
slm.gguf (f16 2 bytes; q8_0 and q4_0 are ggml blocks of 32 values: 34/32 and 18/32 bytes per element).
"""

from __future__ import annotations

from pathlib import Path

import gguf as gguf_py  # gguf-py: ggml's block sizes

from slm.errors import SlmError
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


def unusable_reason(spec: ModelSpec, cache_type: str) -> str | None:
    """Why llama.cpp cannot hold this model's KV cache in `cache_type`, or None when it can: a quantized cache
    stores each head's K (and V) row in whole ggml blocks, so the head size must be a multiple of the block
    (32 values for q8_0 and q4_0); llama.cpp refuses the context otherwise (llama-context.cpp checks
    n_embd_head_k % ggml_blck_size(type_k))."""
    qtype = gguf_py.GGMLQuantizationType.__members__.get(cache_type.upper())
    block = gguf_py.GGML_QUANT_SIZES[qtype][0] if qtype is not None else 1  # f16/f32: blocks of 1
    if spec.head_dim % block:
        return (f"{cache_type} KV cache needs a head size that is a multiple of its {block}-value block; "
                f"this model's heads are {spec.head_dim} wide")
    return None


def measure_llamacpp(gguf: Path, spec: ModelSpec, contexts: list[int], cache_type: str, threads: int,
                     skipped: list | None = None) -> list[dict]:
    """Create a llama.cpp context at each size and record what it allocates, beside the analytic KV bytes.

    A type llama.cpp cannot use for this head size, or a context it refuses, is not measured: its reason
    goes to `skipped` ({"cache_type", "context", "reason"}) and the rest carries on, so a profile's timed
    results are never lost to this last step.
    """

    rows = []
    why = unusable_reason(spec, cache_type)
    if why:
        if skipped is not None:
            skipped.append({"cache_type": cache_type, "context": None, "reason": why})
        return rows
    for c in contexts:
        try:
            b = LlamaCpp(gguf, c, threads, kv_type=cache_type)
        except SlmError as e:
            if skipped is not None:
                skipped.append({"cache_type": cache_type, "context": c, "reason": str(e)})
            continue
        with b:
            m = b.memory()
            cells = m.get("kv_cells", llama_cells(c))
            analytic = kv_bytes(spec, cells, cache_type)
            rows.append({"context": c, "cells": cells, "cache_type": cache_type, "weights": m["weights"],
                         "kv_cache": m.get("kv_cache", 0.0), "kv_analytic": analytic, "compute": m["compute"],
                         "output": m["output"], "rss": rss_bytes(),
                         "kv_rel_err": (m.get("kv_cache", 0.0) - analytic) / analytic})
    return rows
