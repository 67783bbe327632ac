"""Benchmarks for `slm profile`'s llama.cpp backend.

1. Agreement with llama.cpp's own `llama-bench` (built from the llama-cpp-python sdist's vendored llama.cpp, so the
   same ggml as our wheel) on the same file and thread count: pp512 and tg128, target ±3%.
2. Profiler overhead: our figures vs a bare llama-cpp-python loop (llama_decode + perf_counter) over the same
   token counts, target ≤ 2%.

The CPU is shared with other jobs, so each comparison is interleaved A B A B … (ROUNDS times) and the means of the
A and B runs are compared: load drift hits both sides alike.

    .venv/bin/python benchmarks/bench_profile.py [--gguf FILE] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "slm"))
LLAMA_CPP_PYTHON = "0.3.36"  # the version whose vendored llama.cpp our llama_cpp wheel was built from


def build_llama_bench(jobs: int = 2) -> Path:
    """Build only the llama-bench target (cmake, -DLLAMA_BUILD_TOOLS=ON), cached under ~/.cache/slm."""
    root = CACHE / "llama-bench"
    exe = root / "build" / "bin" / "llama-bench"
    if exe.is_file():
        return exe
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(root)], check=True)
    src = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if not src.is_dir():
        with tarfile.open(sdist) as tf:
            tf.extractall(root, filter="data")
    subprocess.run(["cmake", "-S", str(src), "-B", str(root / "build"), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF"], check=True)
    subprocess.run(["cmake", "--build", str(root / "build"), "--target", "llama-bench", "-j", str(jobs)], check=True)
    return exe


def llama_bench(exe: Path, gguf: Path, threads: int, pp: int, tg: int, reps: int) -> dict:
    out = subprocess.run([str(exe), "-m", str(gguf), "-t", str(threads), "-p", str(pp), "-n", str(tg), "-r", str(reps),
                          "-o", "json"], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    return {("pp" if r["n_prompt"] else "tg"): r["avg_ts"] for r in rows}


def ours(gguf: Path, threads: int, pp: int, tg: int, reps: int) -> dict:
    from slm.profiling.llamacpp import LlamaCpp
    from slm.profiling.protocol import BenchArgs, run_tests

    args = BenchArgs(pp=(pp,), tg=tg, depths=(0,), reps=reps, threads=threads)
    with LlamaCpp(gguf, args.max_context(), threads) as b:
        rows = run_tests(b, args)
    return {r["kind"][:2].replace("pr", "pp").replace("de", "tg"): r["tok_s"] for r in rows}


def bare(gguf: Path, threads: int, pp: int, tg: int, reps: int) -> dict:
    """A plain llama-cpp-python loop: same context settings, perf_counter around the decode calls, no profiler."""
    import llama_cpp as L
    import numpy as np

    L.llama_backend_init()
    m = L.llama_model_load_from_file(str(gguf).encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_threads, cp.n_threads_batch = max(pp, tg), threads, threads
    ctx = L.llama_init_from_model(m, cp)
    nv = L.llama_vocab_n_tokens(L.llama_model_get_vocab(m))
    rng = np.random.default_rng(1)
    mem = L.llama_get_memory(ctx)

    def run_pp():
        toks = (L.llama_token * pp)(*rng.integers(0, nv, pp).tolist())
        L.llama_memory_clear(mem, False)
        t = time.perf_counter()
        L.llama_decode(ctx, L.llama_batch_get_one(toks, pp))
        L.llama_synchronize(ctx)
        return pp / (time.perf_counter() - t)

    def run_tg():
        one = [(L.llama_token * 1)(int(x)) for x in rng.integers(0, nv, tg)]
        L.llama_memory_clear(mem, False)
        t = time.perf_counter()
        for x in one:
            L.llama_decode(ctx, L.llama_batch_get_one(x, 1))
            L.llama_synchronize(ctx)
        return tg / (time.perf_counter() - t)

    run_pp(), run_tg()  # warm-up, as the profiler does
    res = {"pp": statistics.fmean(run_pp() for _ in range(reps)), "tg": statistics.fmean(run_tg() for _ in range(reps))}
    L.llama_free(ctx)
    L.llama_model_free(m)
    return res


def interleave(a, b, rounds: int) -> tuple[dict, dict]:
    """A B A B …: mean of each side per key."""
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(a())
        rb.append(b())
    mean = lambda rs: {k: statistics.fmean(r[k] for r in rs) for k in rs[0]}  # noqa: E731
    return mean(ra), mean(rb), ra, rb


def table(title: str, name_a: str, name_b: str, a: dict, b: dict, target: float) -> None:
    print(f"\n{title}")
    print(f"{'test':<8}{name_a:>18}{name_b:>18}{'diff':>10}  target")
    for k in a:
        d = (b[k] - a[k]) / a[k]
        print(f"{k:<8}{a[k]:>14.1f} t/s{b[k]:>14.1f} t/s{d:>+10.2%}  ±{target:.0%} {'ok' if abs(d) <= target else 'OVER'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="GGUF to measure (default: the bundled SmolLM2-135M Q4_1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    from slm.io import default_gguf

    gguf = Path(a.gguf) if a.gguf else default_gguf()
    exe = build_llama_bench()
    print(f"file {gguf.name}, {a.threads} threads, pp{a.pp} / tg{a.tg}, {a.reps} reps per run, "
          f"{a.rounds} interleaved rounds (A B A B …) to cancel load drift on the shared CPU")
    args = (gguf, a.threads, a.pp, a.tg, a.reps)
    lb, us, rlb, rus = interleave(lambda: llama_bench(exe, *args), lambda: ours(*args), a.rounds)
    table("slm profile (llama.cpp backend) vs llama-bench", "llama-bench", "slm profile", lb, us, 0.03)
    print("  per round llama-bench:", [{k: round(v, 1) for k, v in r.items()} for r in rlb])
    print("  per round slm profile:", [{k: round(v, 1) for k, v in r.items()} for r in rus])
    br, us2, rbr, rus2 = interleave(lambda: bare(*args), lambda: ours(*args), a.rounds)
    table("profiler overhead: slm profile vs a bare llama-cpp-python loop", "bare loop", "slm profile", br, us2, 0.02)
    print("  per round bare loop:  ", [{k: round(v, 1) for k, v in r.items()} for r in rbr])
    print("  per round slm profile:", [{k: round(v, 1) for k, v in r.items()} for r in rus2])


if __name__ == "__main__":
    main()
