"""This host's memory bandwidth and matrix throughput, measured once and cached per machine, and the roofline
bounds that put every speed in proportion.

Roofline (Williams et al., CACM 2009): decode reads all weights plus the KV cache so far for each token, so
decode tok/s ≤ bandwidth / (weight bytes + KV bytes at that depth); prefill is compute-bound, ≈ 2 FLOPs per
weight per token (a multiply and an add) plus attention's 4 × layers × heads × head_dim FLOPs per token per
earlier token (QKᵀ and AV; Kaplan et al. 2020, table 1), so prefill tok/s ≤ peak FLOP/s / FLOPs per token.

Bandwidth depends on the working set: a small model's weights can sit in the last-level cache (this project's
CI host has a 480 MiB L3, which holds a 135M model at 4 bits), and decode then runs above any DRAM roofline.
So the copy is timed at several working-set sizes (the bandwidth curve) and each decode bound uses the
bandwidth at its own bytes per token, log-interpolated on that curve; `bandwidth_Bps` is the DRAM figure
(working set ≥ 4 × the last-level cache).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from slm.record import atomic_write_text
from slm.spec import ModelSpec

CACHE = Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "slm")) / "host.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_key(threads: int) -> str:
    return f"{cpu_model()} | {os.cpu_count()} cpus | {threads} threads"


def llc_bytes() -> int:
    """The last-level cache of CPU 0 in bytes (sysfs; 0 where it is not exposed)."""
    best = 0
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (d / "type").read_text().strip() == "Instruction":
                continue
            size = (d / "size").read_text().strip().upper()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
            best = max(best, int(size.rstrip("KMG")) * mult)
        except (OSError, ValueError):
            continue
    return best


def _bandwidth(nbytes: int = 256 * 2**20, reps: int = 5) -> float:
    """Best-of-N numpy copy of a buffer much larger than the caches: bytes read + bytes written per second."""

    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def _matmul_flops(threads: int, dtype: str, n: int = 2048, reps: int = 5, budget_s: float = 3.0) -> float:
    """Best-of-N torch matmul of n×n matrices: 2n³ operations per product (int8 through torch._int_mm).

    The size doubles from 256 until one product takes ≥ 50 ms (or n is reached), and repetitions stop once
    `budget_s` is spent: a dtype without fast CPU kernels (bf16 without AMX/AVX512-BF16 takes ~55 s for one
    2048³ product on 2 cores) is then measured in seconds, at a size where it is still compute-bound."""
    import torch  # torch: deferred, a heavy import

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        size = 256
        while True:
            if dtype == "int8":
                a = torch.randint(-100, 100, (size, size), dtype=torch.int8)
                b = torch.randint(-100, 100, (size, size), dtype=torch.int8)
                mm = torch._int_mm
            else:
                a, b = (torch.randn(size, size, dtype=getattr(torch, dtype)) for _ in range(2))
                mm = torch.mm
            mm(a, b)  # warm-up (first call allocates and picks kernels)
            t = time.perf_counter()
            mm(a, b)
            best = time.perf_counter() - t
            if best >= 0.05 or size >= n:
                break
            size *= 2
        spent = best
        for _ in range(reps - 1):
            if spent > budget_s:
                break
            t = time.perf_counter()
            mm(a, b)
            dt = time.perf_counter() - t
            best, spent = min(best, dt), spent + dt
    except (RuntimeError, AttributeError):  # a torch build without this kernel on CPU
        return 0.0
    finally:
        torch.set_num_threads(old)
    return 2 * size**3 / best


def _bandwidth_torch(threads: int, nbytes: int = 256 * 2**20, reps: int = 5) -> float:
    """Same copy with torch on `threads` threads (numpy copies on one); `nbytes` is one buffer (the working
    set is twice that)."""
    import torch  # torch: deferred, a heavy import

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.ones(nbytes // 4)
        b = torch.empty_like(a)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            b.copy_(a)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return 2 * nbytes / best


def host_peaks(threads: int, refresh: bool = False, cache: Path = CACHE) -> dict:
    """{"bandwidth_Bps", "flops", "key", "measured_at", "how"}; measured once per (CPU model, cores,
    threads)."""
    key = host_key(threads)
    data = json.loads(cache.read_text()) if cache.is_file() else {}
    if key in data and "bandwidth_curve" in data[key] and not refresh:  # older entries lack the curve
        return {**data[key], "cached": True}
    peaks = {d: _matmul_flops(threads, d) for d in ("float32", "bfloat16", "int8")}
    llc = llc_bytes()
    # DRAM: a working set of 4 × the last-level cache (≥ 512 MiB, ≤ 4 GiB) cannot be served from it
    dram_ws = min(max(4 * llc, 512 * 2**20), 4 * 2**30)
    curve = [[ws, _bandwidth_torch(threads, ws // 2, reps=5 if ws >= 2**28 else 20)]
             for ws in (16 * 2**20, 64 * 2**20, 256 * 2**20) if ws < dram_ws]
    dram = max(_bandwidth(dram_ws // 2), _bandwidth_torch(threads, dram_ws // 2))
    curve.append([dram_ws, dram])
    for i in range(len(curve) - 2, -1, -1):  # a smaller working set is never slower: a lower point was noise
        curve[i][1] = max(curve[i][1], curve[i + 1][1])
    entry = {"key": key, "bandwidth_Bps": dram, "bandwidth_curve": curve, "llc_bytes": llc, "peaks": peaks,
             "flops": max(peaks.values()), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "how": f"bandwidth: best of 5–20 torch copies ({threads} threads; read + write bytes) at "
                    f"working sets of 16, 64, 256 MiB and {dram_ws / 2**30:.2g} GiB (DRAM: ≥ 4 × the "
                    f"{llc / 2**20:.0f} MiB last-level cache; numpy on 1 thread too), a decode bound reading "
                    "the curve at its bytes per token; compute: best of ≤ 5 torch n×n matmuls (n doubling "
                    f"from 256 to 2048 until one takes 50 ms) on {threads} threads in fp32, bf16 and int8 "
                    "(torch._int_mm); the roofline uses the highest (llama.cpp's quantized kernels use int8 "
                    "dot products); the torch backend's peak is its dtype's"}
    data[key] = entry
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps(data, indent=2))
    return {**entry, "cached": False}


def flops_per_token(spec: ModelSpec, context: float = 0) -> float:
    """Forward FLOPs per token attending over `context` earlier tokens (ModelSpec.forward_flops: the matmul
    weights, the LM head included, and attention; the embedding lookup is free)."""
    return spec.forward_flops(context)


def bandwidth_at(host: dict, working_set: float) -> float:
    """The host's copy bandwidth at a working set of `working_set` bytes: log-linear between the measured
    sizes, the end values beyond them; the DRAM figure where no curve was measured."""
    curve = host.get("bandwidth_curve") or [[1, host["bandwidth_Bps"]]]
    xs, ys = [np.log(c[0]) for c in curve], [c[1] for c in curve]
    return float(np.interp(np.log(max(working_set, 1)), xs, ys))


def memory_level(host: dict, working_set: float) -> str:
    """Where a working set of that size is served from, as the roofline assumes."""
    llc = host.get("llc_bytes") or 0
    fits = working_set <= llc and host.get("bandwidth_curve")
    return f"in the {llc / 2**20:.0f} MiB last-level cache" if fits else "DRAM"


def decode_bound(bandwidth_Bps: float, weight_bytes: float, kv_bytes_per_token: float, depth: float) -> float:
    """tok/s upper bound of decoding at `depth`: each step reads all weights and the cache so far."""
    return bandwidth_Bps / (weight_bytes + kv_bytes_per_token * depth)


def prefill_flops_per_token(spec: ModelSpec, n_prompt: int) -> float:
    """Forward FLOPs per prompt token of an n_prompt prefill (mean attention context n/2) that computes logits
    for the last token only, as llama.cpp does for a prompt batch (llama_batch_get_one: llama-bench's pp tests
    and our timed prefill) and generation does: the LM head runs once per prompt, not once per token."""
    return spec.forward_flops(n_prompt / 2, head=False) + spec.head_flops() / n_prompt


def prefill_bound(flops: float, spec: ModelSpec, n_prompt: int) -> float:
    """tok/s upper bound of a prefill of n_prompt tokens (prefill_flops_per_token)."""
    return flops / prefill_flops_per_token(spec, n_prompt)


def cached_peaks(threads: int, cache: Path = CACHE) -> dict:
    """The cached figures (and last measured efficiency, a host figure) without measuring; zeros when none.
    Device projections never read it: they come from slm.profiling.calibration alone."""
    data = json.loads(cache.read_text()) if cache.is_file() else {}
    return data.get(host_key(threads), {"key": host_key(threads), "bandwidth_Bps": 0.0, "flops": 0.0,
                                        "how": "not measured"})


def save_efficiency(threads: int, rows: list[dict], cache: Path = CACHE) -> None:
    """Remember the median llama.cpp roofline fractions of the last measured run (its protocol rows), as this
    host's own figure (shown with host results; never used to scale a device projection — see
    slm.profiling.calibration)."""

    data = json.loads(cache.read_text()) if cache.is_file() else {}
    key = host_key(threads)
    if key not in data:
        return
    eff = {kind: statistics.median(v) for kind in ("decode", "prefill")
           if (v := [r["roofline_fraction"] for r in rows if r["kind"] == kind])}
    if len(eff) == 2:
        data[key]["efficiency"] = eff
        atomic_write_text(cache, json.dumps(data, indent=2))
