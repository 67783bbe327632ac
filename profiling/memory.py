"""llama.cpp's own memory at the profile's context, three ways, side by side:

- logged: the model, KV-cache, compute and output buffers llama.cpp reports allocating (quant.llamacpp);
- resident: a bare subprocess's peak RSS over its baseline (quant.llamacpp_rss) — what the OS sees;
- planned: `slm plan`'s estimate for the same shape and context (weights as llama.cpp holds them, the
  analytic KV cache of the cells it allocates, profiling.plan.compute_bytes for the compute buffers).

The profiling process's own RSS is a different thing (torch and every import) and is labelled so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from slm.figure import Figure
from slm.profiling.kv import kv_bytes, llama_cells
from slm.profiling.plan import compute_bytes
from slm.quant.llamacpp_rss import measure_rss

PARTS = ("weights", "kv_cache", "compute", "output")


def llamacpp_memory(gguf: Path, spec, n_ctx: int, threads: int, logged: dict,
                    progress: Callable[[str], None] = lambda m: None) -> dict:
    """{"n_ctx", "logged": {part: bytes}, "planned": {part: bytes}, "resident": measure_rss's record or
    None, "error"?}; `logged` is the profiled context's b.memory()."""
    cells = int(logged.get("kv_cells") or llama_cells(n_ctx))
    # CPU llama.cpp turns flash attention on by itself (auto) when the backend supports it, as here
    planned = {"weights": float(logged.get("weights", 0.0)), "kv_cache": kv_bytes(spec, cells, "f16"),
               "compute": compute_bytes(spec, n_ctx, flash_attn=True), "output": 4.0 * spec.vocab}
    out = {"n_ctx": n_ctx, "cells": cells, "logged": {k: float(logged.get(k, 0.0)) for k in PARTS},
           "planned": planned, "resident": None}
    progress(f"llama.cpp: resident memory of a bare subprocess at context {n_ctx}")
    try:
        out["resident"] = measure_rss(gguf, n_ctx, threads, prompt=min(512, n_ctx // 2), steps=16)
    except (RuntimeError, OSError) as e:  # a finding for the report, not the end of the profile
        out["error"] = str(e).splitlines()[0][:300]
    return out


def memory_figures(m: dict, how: str) -> list[Figure]:
    """llama.cpp's logged total, the plan's estimate of it, and the resident bytes over the baseline."""
    logged, planned = sum(m["logged"].values()), sum(m["planned"].values())
    src = f"context {m['n_ctx']:,} ({m['cells']:,} KV cells, f16)"
    out = [Figure("llama.cpp.memory_logged",
                  "llama.cpp's memory: model + KV cache + compute buffers (logged)", int(logged), "bytes",
                  "lower", "memory", how, exact=True, key=True,
                  source=f"llama.cpp's allocation log lines, {src}"),
           Figure("llama.cpp.memory_planned", "llama.cpp's memory as slm plan estimates it", int(planned),
                  "bytes", "lower", "memory", "analytic", exact=True,
                  source=f"weights as logged + analytic KV + plan.compute_bytes, {src}",
                  note=f"{(planned - logged) / logged:+.1%} vs logged" if logged else "")]
    r = m.get("resident")
    if r:
        out.append(Figure("llama.cpp.memory_resident", "llama.cpp's resident memory over its baseline",
                          int(r["over_baseline"]), "bytes", "lower", "memory", how, n=1,
                          source=f"a bare subprocess's peak RSS (VmHWM) − its RSS before loading, {src}, "
                                 f"after a {r['prompt']}-token prompt and {r['steps']} decode steps",
                          note="one run; includes the allocator's slack and the file pages read"))
    return out
