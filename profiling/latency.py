"""Latency as an app developer reads it: time to first token (TTFT) and inter-token latency (ITL).

MLPerf Client reports both for on-device LLMs (TTFT, and TPOT — time per output token — over the rest of the
answer); llama-bench reports throughput only. Here one test streams `tokens` greedy tokens after a random
`prompt`-token prompt on an empty cache, the way a chat loop runs: TTFT is the wall time from submitting the
prompt to the first token id, each ITL the wall time between two consecutive token ids (one decode step with
the pick of its token). It repeats (at least `reps` times, until the time cap) and reports TTFT's mean with
its Student-t 95 % interval and median, and the ITL p50 / p90 / p99 over every generated token of every
repetition — percentiles, not a mean, because an app's stutter is its tail (MLPerf's server scenario also
bounds the 99th percentile).

`projected_ttft_s` is the same figure from throughput alone (a device projection, `slm plan`): the prompt at
the prefill rate plus one decode step, so that the first token's own pick and hand-off are paid at the decode
rate. The profile shows it beside the measured TTFT on this host, which checks the formula where both exist.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from slm.figure import Figure, timed
from slm.profiling.hostload import Window
from slm.profiling.protocol import BenchArgs
from slm.stats import ci95_of

PERCENTILES = (50, 90, 99)


def projected_ttft_s(prompt: int, prefill_tok_s: float, decode_tok_s: float) -> float:
    """TTFT from throughput: `prompt` tokens at the prefill rate plus one decode step (seconds)."""
    if prompt < 1 or prefill_tok_s <= 0 or decode_tok_s <= 0:
        raise ValueError("prompt must be ≥ 1 token and both rates > 0 tok/s")
    return prompt / prefill_tok_s + 1.0 / decode_tok_s


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 (numpy's linear interpolation between order statistics)."""
    return {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}


def measure_latency(stream: Callable[[int, int], list[float]], prompt: int, tokens: int,
                    args: BenchArgs) -> dict:
    """Run `stream(prompt, tokens)` (→ [TTFT, ITL, ITL, …] in seconds) after the protocol's warm-up, at least
    `args.reps` times and on, as the throughput tests do, until TTFT's 95 % interval is within
    ±`args.target_ci` of its mean, the time cap or `args.max_reps`; summarise in milliseconds."""
    for _ in range(args.warmup):
        stream(prompt, min(tokens, 2))
    window, runs, t0 = Window(), [], time.perf_counter()
    while len(runs) < args.max_reps:
        runs.append(stream(prompt, tokens))
        if len(runs) < args.reps:
            continue
        ttft = [r[0] for r in runs]
        ci = ci95_of(ttft)
        if ci is not None and ci <= args.target_ci * statistics.fmean(ttft) or \
                time.perf_counter() - t0 >= args.time_cap_s:
            break
    load = window.stop()
    ttft = [r[0] * 1e3 for r in runs]
    itl = [x * 1e3 for r in runs for x in r[1:]]
    return {"prompt": prompt, "tokens": tokens, "reps": len(runs),
            "ttft_ms": statistics.fmean(ttft),
            "ttft_ms_std": statistics.stdev(ttft) if len(ttft) > 1 else 0.0,
            "ttft_ms_p50": statistics.median(ttft), "ttft_samples_ms": ttft,
            "itl_ms": percentiles(itl) if itl else {}, "itl_ms_mean": statistics.fmean(itl) if itl else None,
            "itl_n": len(itl), "disturbed": load.disturbed, "other_cpu_share": load.other_cpu_share}


def latency_figures(name: str, lat: dict, how: str, threads: int, pp: dict | None = None,
                    tg: dict | None = None) -> list[Figure]:
    """TTFT (mean ± 95 % interval) and ITL percentiles of one backend; with its throughput rows `pp` (a
    prefill of the same prompt length, if measured) and `tg` (decode from an empty cache), the TTFT the
    throughput formula gives, as a check of the projection."""
    src = f"{threads} threads, {lat['reps']} streams of {lat['tokens']} greedy tokens after a random " \
          f"{lat['prompt']}-token prompt"
    d = lat["disturbed"]
    out = [timed(f"{name}.ttft", f"time to first token, {lat['prompt']}-token prompt ({name})",
                 round(lat["ttft_ms"], 3), lat["ttft_ms_std"], lat["reps"], unit="ms", better="lower",
                 group="latency", how=how, disturbed=d, key=name == "llama.cpp", source=src)]
    for q, v in lat["itl_ms"].items():
        out.append(Figure(f"{name}.itl_{q}", f"inter-token latency {q} ({name})", round(v, 3), "ms", "lower",
                          "latency", how, n=lat["itl_n"], disturbed=d, key=name == "llama.cpp" and q == "p99",
                          source=src, note="a percentile over every generated token: no interval"))
    if pp and tg:
        est = projected_ttft_s(lat["prompt"], pp["tok_s"], tg["tok_s"]) * 1e3
        out.append(Figure(f"{name}.ttft_from_throughput", f"time to first token from {pp['test']} and "
                          f"{tg['test']} ({name})", round(est, 3), "ms", "lower", "latency", how,
                          disturbed=d or pp.get("disturbed", False) or tg.get("disturbed", False),
                          source="prompt / prefill tok/s + 1 / decode tok/s (the projection's formula)",
                          note="the formula slm plan projects with, applied to this host's throughput"))
    return out
