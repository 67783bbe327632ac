"""Benchmarks for `slm profile`'s llama.cpp backend.

1. Agreement with llama.cpp's own `llama-bench` (built from the llama-cpp-python sdist's vendored llama.cpp,
   so the same ggml as our wheel) on the same file and thread count: pp512 and tg128, target ±3%.
2. Profiler overhead: our figures vs a bare llama-cpp-python loop (llama_decode + perf_counter) over the same
   token counts, target ≤ 2%.

The CPU is shared with other jobs, so each comparison is interleaved A B A B … (ROUNDS times) and the means of
the A and B runs are compared: load drift hits both sides alike.

    .venv/bin/python benchmarks/bench_profile.py [--gguf FILE] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
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
    subprocess.run(["cmake", "-S", str(src), "-B", str(root / "build"), "-G", "Ninja",
                    "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF",
                    "-DBUILD_SHARED_LIBS=OFF"], check=True)
    subprocess.run(["cmake", "--build", str(root / "build"), "--target", "llama-bench", "-j", str(jobs)],
                   check=True)
    return exe


def llama_bench(exe: Path, gguf: Path, threads: int, pp: int, tg: int) -> dict:
    """One llama-bench sample of pp and tg (its own warm-up run first, -r 1)."""
    out = subprocess.run([str(exe), "-m", str(gguf), "-t", str(threads), "-p", str(pp), "-n", str(tg),
                          "-r", "1", "-o", "json"], capture_output=True, text=True, check=True).stdout
    return {("pp" if r["n_prompt"] else "tg"): r["avg_ts"] for r in json.loads(out)}


class Ours:
    """slm profile's llama.cpp backend, one sample of pp and tg per call (warm-up included, as
    llama-bench)."""

    def __init__(self, gguf: Path, threads: int, pp: int, tg: int):
        from slm.profiling.protocol import BenchArgs
        from slm.quant.llamacpp import LlamaCpp

        self.args = BenchArgs(pp=(pp,), tg=tg, depths=(0,), reps=1, threads=threads)
        self.b = LlamaCpp(gguf, self.args.max_context(), threads)

    def __call__(self) -> dict:
        from slm.profiling.protocol import run_tests

        return {("pp" if r["kind"] == "prefill" else "tg"): r["tok_s"] for r in run_tests(self.b, self.args)}


class Bare:
    """A plain llama-cpp-python loop: same context settings, perf_counter around the decode calls, no
    profiler."""

    def __init__(self, gguf: Path, threads: int, pp: int, tg: int):
        import llama_cpp as L
        import numpy as np

        L.llama_backend_init()
        self.L, self.pp, self.tg = L, pp, tg
        self.m = L.llama_model_load_from_file(str(gguf).encode(), L.llama_model_default_params())
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_threads, cp.n_threads_batch = pp + tg, threads, threads
        self.ctx = L.llama_init_from_model(self.m, cp)
        self.nv = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.m))
        self.rng = np.random.default_rng(1)
        self.mem = L.llama_get_memory(self.ctx)

    def _pp(self) -> float:
        L, n = self.L, self.pp
        toks = (L.llama_token * n)(*self.rng.integers(0, self.nv, n).tolist())
        L.llama_memory_clear(self.mem, False)
        t = time.perf_counter()
        L.llama_decode(self.ctx, L.llama_batch_get_one(toks, n))
        L.llama_synchronize(self.ctx)
        return n / (time.perf_counter() - t)

    def _tg(self) -> float:
        L = self.L
        one = [(L.llama_token * 1)(int(x)) for x in self.rng.integers(0, self.nv, self.tg)]
        L.llama_memory_clear(self.mem, False)
        t = time.perf_counter()
        for x in one:
            L.llama_decode(self.ctx, L.llama_batch_get_one(x, 1))
            L.llama_synchronize(self.ctx)
        return self.tg / (time.perf_counter() - t)

    def __call__(self) -> dict:
        self._pp()  # warm-up, as the profiler and llama-bench do
        pp = self._pp()
        self._tg()
        return {"pp": pp, "tg": self._tg()}


def compare(title: str, name_a: str, name_b: str, a, b, rounds: int, target: float) -> None:
    """A B A B … one sample each; adjacent samples see the same load, so the median of the paired ratios is
    the figure judged (means and best-of are printed beside it)."""
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(a())
        rb.append(b())
    print(f"\n{title}  ({rounds} interleaved pairs)")
    print(f"{'test':<6}{name_a + ' mean':>18}{name_b + ' mean':>18}{'best A':>10}{'best B':>10}"
          f"{'median B/A-1':>14}  target")
    for k in ra[0]:
        ratios = sorted(y[k] / x[k] - 1 for x, y in zip(ra, rb))
        med = statistics.median(ratios)
        ma, mb = statistics.fmean(r[k] for r in ra), statistics.fmean(r[k] for r in rb)
        best = max(r[k] for r in rb) / max(r[k] for r in ra) - 1
        print(f"{k:<6}{ma:>14.1f} t/s{mb:>14.1f} t/s{max(r[k] for r in ra):>10.1f}"
              f"{max(r[k] for r in rb):>10.1f}"
              f"{med:>+14.2%}  ±{target:.0%} {'ok' if abs(med) <= target else 'OVER'} (best-of {best:+.2%})")
    print("  samples A:", [{k: round(v, 1) for k, v in r.items()} for r in ra])
    print("  samples B:", [{k: round(v, 1) for k, v in r.items()} for r in rb])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="GGUF to measure (default: the bundled SmolLM2-135M Q4_1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    a = ap.parse_args()
    from slm.gguf_import import default_gguf

    gguf = Path(a.gguf) if a.gguf else default_gguf()
    exe = build_llama_bench()
    print(f"file {gguf.name}, {a.threads} threads, pp{a.pp} / tg{a.tg}; the CPU is shared, so the two sides "
          "are interleaved A B A B … to cancel load drift")
    ours = Ours(gguf, a.threads, a.pp, a.tg)
    compare("slm profile (llama.cpp backend) vs llama-bench", "llama-bench", "slm",
            lambda: llama_bench(exe, gguf, a.threads, a.pp, a.tg), ours, a.rounds, 0.03)
    compare("profiler overhead: slm profile vs a bare llama-cpp-python loop", "bare", "slm",
            Bare(gguf, a.threads, a.pp, a.tg), ours, a.rounds, 0.02)


if __name__ == "__main__":
    main()
