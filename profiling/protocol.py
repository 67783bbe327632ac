"""One measurement protocol for every backend, modelled on llama.cpp's `llama-bench`.

For each test: one warm-up run, then R timed repetitions; a figure is the mean ± sample std of the per-run
tokens/second (llama-bench reports avg_ts/stddev_ts the same way). Prefill tests (ppN) time N prompt tokens from
an empty cache; decode tests (tgN @ dD) first fill the cache with D tokens (untimed) and then time N single-token
steps. Tokens are random ids, as in llama-bench, so no tokenizer is needed and nothing depends on text.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

from slm.errors import SlmError


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
    reps: int = 3  # timed repetitions per test (llama-bench's default is 5; 3 keeps the full profile < 15 min)
    warmup: int = 1  # untimed runs before the repetitions
    threads: int = field(default_factory=default_threads)  # CPU threads for every backend
    seed: int = 0  # seed of the random token ids

    def __post_init__(self):
        self.pp, self.depths = tuple(int(x) for x in self.pp), tuple(int(x) for x in self.depths)
        if any(n < 1 for n in self.pp) or self.tg < 0 or any(d < 0 for d in self.depths):
            raise SlmError("prompt lengths must be ≥ 1 and tg/depths ≥ 0: fix --pp/--tg/--depths")
        if self.reps < 1 or self.warmup < 0:
            raise SlmError("--reps must be ≥ 1 and warm-up ≥ 0")
        if self.threads < 1:
            raise SlmError("--threads must be ≥ 1")

    def max_context(self) -> int:
        """Cache cells the largest test needs."""
        return max([*self.pp, *[d + self.tg for d in self.depths]] or [1])

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
    """mean ± sample standard deviation (0 for a single value) and the raw samples."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values), "samples": values}


def measure(fn: Callable[[], float], n_tokens: int, args: BenchArgs) -> dict:
    """Warm up, repeat, and summarise one test as tokens/s (and ms per run)."""
    for _ in range(args.warmup):
        fn()
    secs = [fn() for _ in range(args.reps)]
    tps = [n_tokens / s for s in secs]
    return {"tok_s": stats(tps), "ms": stats([s * 1e3 for s in secs])}


def run_tests(backend: Backend, args: BenchArgs, progress: Callable[[str], None] = lambda m: None) -> list[dict]:
    """The prefill and decode tests of `args` on one backend, each as a flat row (stable keys)."""
    rows = []
    for n in args.pp:
        progress(f"{backend.name}: pp{n}")
        m = measure(lambda: backend.prefill(n), n, args)
        # Time to first token for this prompt: the prefill makes the logits of the last prompt token, from which
        # the first new token is picked; so TTFT = prefill time (+ sampling, negligible next to it).
        rows.append({"test": f"pp{n}", "kind": "prefill", "n_tokens": n, "depth": 0, "tok_s": m["tok_s"]["mean"],
                     "tok_s_std": m["tok_s"]["std"], "ttft_ms": m["ms"]["mean"], "samples_tok_s": m["tok_s"]["samples"]})
    if args.tg:
        for d in args.depths:
            progress(f"{backend.name}: tg{args.tg} @ d{d}")
            m = measure(lambda: backend.decode(args.tg, d), args.tg, args)
            rows.append({"test": f"tg{args.tg}@d{d}", "kind": "decode", "n_tokens": args.tg, "depth": d,
                         "tok_s": m["tok_s"]["mean"], "tok_s_std": m["tok_s"]["std"],
                         "ms_per_token": m["ms"]["mean"] / args.tg, "samples_tok_s": m["tok_s"]["samples"]})
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
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss

