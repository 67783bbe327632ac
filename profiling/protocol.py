"""One measurement protocol for every backend, modelled on llama.cpp's `llama-bench`.

For each test: one warm-up run, then timed repetitions; a figure is the mean ± sample std of the per-run
tokens/second (llama-bench reports avg_ts/stddev_ts the same way) and its Student-t 95 % interval. Unlike
llama-bench's fixed count, repetitions go on past the minimum until the interval is within ±`target_ci` of the
mean or the test's time cap is hit (adaptive stopping; the interval and the count are recorded). The machine's
load is sampled over each test (slm.profiling.hostload): a figure measured while other processes took CPU is
`disturbed`, one whose interval stayed wider than the target is `wide`; reports mark both and draw no
conclusion from them. Prefill tests (ppN) time N prompt tokens from an empty cache; decode tests (tgN @ dD)
first fill the cache with D tokens (untimed) and then time N single-token steps. Tokens are random ids, as in
llama-bench, so no tokenizer is needed and nothing depends on text. Where the machine measures energy (a
Jetson's INA3221 rails, a host's readable RAPL counters) each test also gets joules per token and tokens per
joule over its timed runs (slm.profiling.energy); elsewhere they are None.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import psutil

from slm.errors import SlmError
from slm.profiling.energy import Meter, per_token
from slm.profiling.hostload import Window, jetson_power_mode
from slm.stats import ci95_of


def default_threads() -> int:
    """Cores this process may run on (llama-bench uses the physical core count; on this host they agree)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class BenchArgs:
    """What to measure and how often."""

    pp: tuple = (128, 512, 2048)  # prompt lengths for prefill tests (tokens)
    tg: int = 128  # tokens generated per decode test
    depths: tuple = (0, 512, 2048)  # cache depth before each decode test (tokens)
    # minimum timed repetitions per test (llama-bench's fixed default is 5; more run while noisy)
    reps: int = 3
    warmup: int = 1  # untimed runs before the repetitions
    target_ci: float = 0.03  # stop repeating once the 95 % interval is within ± this fraction of the mean
    # no new repetition starts once a test's timed runs have taken this long (seconds)
    time_cap_s: float = 10.0
    # hard limit on repetitions (millisecond tests on a tiny model would otherwise run thousands)
    max_reps: int = 30
    threads: int = field(default_factory=default_threads)  # CPU threads for every backend
    # prompt of the latency test (TTFT, inter-token latency; slm.profiling.latency); 0: no latency test;
    # None: the longest prefill length ≤ 512 (a chat turn), so TTFT stands beside a measured pp throughput
    latency_prompt: int | None = None
    latency_tokens: int = 64  # greedy tokens streamed per latency test (the ITL percentiles' sample)
    seed: int = 0  # seed of the random token ids

    def __post_init__(self):
        self.pp, self.depths = tuple(int(x) for x in self.pp), tuple(int(x) for x in self.depths)
        if self.latency_prompt is None:
            self.latency_prompt = max([p for p in self.pp if p <= 512] or [min(self.pp, default=0)])
        if any(n < 1 for n in self.pp) or self.tg < 0 or any(d < 0 for d in self.depths):
            raise SlmError("prompt lengths must be ≥ 1 and tg/depths ≥ 0: fix --pp/--tg/--depths")
        if self.reps < 1 or self.warmup < 0:
            raise SlmError("--reps must be ≥ 1 and warm-up ≥ 0")
        if not 0 < self.target_ci < 1 or self.time_cap_s <= 0 or self.max_reps < self.reps:
            raise SlmError(f"--target-ci must be in (0, 1) (got {self.target_ci}), --time-cap > 0 s "
                           f"(got {self.time_cap_s}) and --max-reps ≥ --reps "
                           f"(got {self.max_reps} < {self.reps})" if self.max_reps < self.reps else
                           f"--target-ci must be in (0, 1) (got {self.target_ci}) and --time-cap > 0 s "
                           f"(got {self.time_cap_s})")
        if self.threads < 1:
            raise SlmError("--threads must be ≥ 1")
        if self.latency_prompt < 0 or self.latency_tokens < 2:
            raise SlmError(f"--latency-prompt must be ≥ 0 (0: no latency test; got {self.latency_prompt}) "
                           f"and --latency-tokens ≥ 2 (one TTFT and at least one inter-token gap; got "
                           f"{self.latency_tokens})")

    def max_context(self) -> int:
        """Cache cells the largest test needs."""
        return max([*self.pp, *[d + self.tg for d in self.depths]] or [1])

    def context_needed(self) -> int:
        """Cache cells every test needs, the latency test included."""
        lat = self.latency_prompt + self.latency_tokens if self.latency_prompt else 0
        return max(self.max_context(), lat)

    def to_dict(self) -> dict:
        return asdict(self)


class Backend(Protocol):
    """What a backend provides: timed prefill and decode from a (possibly pre-filled) empty cache.

    Each call returns seconds of the timed part only; `depth` tokens are processed before the clock starts.
    """

    name: str

    def prefill(self, n: int, depth: int = 0) -> float: ...

    def decode(self, n: int, depth: int = 0) -> float: ...

    def memory(self) -> dict: ...

    def close(self) -> None: ...


class Closing:
    """`with backend:` closes it; the torch and onnxruntime-genai backends derive from this."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stats(values: list[float]) -> dict:
    """mean ± sample standard deviation (0 for a single value), the 95 % interval's half-width, the raw
    samples."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values), "ci95": ci95_of(values), "samples": values}


def _rel(values: list[float]) -> float | None:
    ci = ci95_of(values)
    mean = statistics.fmean(values)
    return None if ci is None or not mean else ci / mean


def measure(fn: Callable[[], float], n_tokens: int, args: BenchArgs) -> dict:
    """Warm up, repeat until the interval is tight (or the cap), and summarise one test as tokens/s (and ms
    per run), with the machine's load over the timed runs and why the repetitions stopped."""
    for _ in range(args.warmup):
        fn()
    window, meter, t0, secs, stop = Window(), Meter().start(), time.perf_counter(), [], "max_reps"
    try:
        while len(secs) < args.max_reps:
            secs.append(fn())
            if len(secs) < args.reps:
                continue
            rel = _rel([n_tokens / s for s in secs])
            if rel is not None and rel <= args.target_ci:
                stop = "interval"
                break
            if time.perf_counter() - t0 >= args.time_cap_s:
                stop = "time_cap"
                break
    finally:
        metered = meter.stop()  # the sampling thread ends even when a run fails
    # slm.profiling.energy: None where unmeasurable
    energy = per_token(metered, sum(secs), n_tokens * len(secs))
    tps = [n_tokens / s for s in secs]
    return {"tok_s": stats(tps), "ms": stats([s * 1e3 for s in secs]), "load": window.stop(), "stop": stop,
            "energy": energy}


def _row(test: str, kind: str, n: int, depth: int, m: dict, args: BenchArgs) -> dict:
    """One flat result row: the figure, its interval, and whether it can be trusted."""
    t, load = m["tok_s"], m["load"]
    ci_rel = t["ci95"] / t["mean"] if t["ci95"] is not None and t["mean"] else None
    wide = ci_rel is None or ci_rel > args.target_ci
    flags = ([f"other processes used {load.other_cpu_share:.0%} of the CPU"] if load.disturbed else []) + \
        ([f"95 % interval ±{ci_rel:.1%} wider than ±{args.target_ci:.0%}" if ci_rel is not None
          else "one repetition: no interval"] if wide else [])
    return {"test": test, "kind": kind, "n_tokens": n, "depth": depth, "tok_s": t["mean"],
            "tok_s_std": t["std"], "reps": t["n"], "ci95": t["ci95"], "ci_rel": ci_rel, "stop": m["stop"],
            "disturbed": load.disturbed, "wide": wide, "flags": flags,
            "other_cpu_share": load.other_cpu_share, "cpu_mhz": load.cpu_mhz,
            "window_s": round(load.wall_s, 3), **({"jetson": load.jetson} if load.jetson else {}),
            **m.get("energy", {}), "samples_tok_s": t["samples"]}


def run_tests(backend: Backend, args: BenchArgs,
              progress: Callable[[str], None] = lambda m: None) -> list[dict]:
    """The prefill and decode tests of `args` on one backend, each as a flat row (stable keys)."""
    rows, mode = [], jetson_power_mode()
    for n in args.pp:
        progress(f"{backend.name}: pp{n}")
        m = measure(lambda: backend.prefill(n), n, args)
        # the prompt's wall time per run; time to first token as an app sees it is the latency test's
        # (slm.profiling.latency: prompt, pick and hand-off of the first token, timed by the wall clock)
        rows.append({**_row(f"pp{n}", "prefill", n, 0, m, args), "prefill_ms": m["ms"]["mean"]})
    if args.tg:
        for d in args.depths:
            progress(f"{backend.name}: tg{args.tg} @ d{d}")
            m = measure(lambda: backend.decode(args.tg, d), args.tg, args)
            rows.append({**_row(f"tg{args.tg}@d{d}", "decode", args.tg, d, m, args),
                         "ms_per_token": m["ms"]["mean"] / args.tg})
    for r in rows:
        if mode:
            r["power_mode"] = mode
    return rows


# ---- process memory -------------------------------------------------------------------------------------
def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size since the last reset (VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:

    return psutil.Process().memory_info().rss

