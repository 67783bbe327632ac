"""Quantization sweep: for each GGUF type, size, bits per weight, what the file really holds, prefill and decode
speed, and quality as perplexity and KL divergence vs the f16 file on the same held-out text.

Quality follows llama.cpp's `llama-perplexity --kl-divergence`: the text is cut into chunks of n_ctx tokens and
only the second half of each chunk is scored, so every scored token has at least n_ctx/2 tokens of context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from slm.errors import SlmError

DEFAULT_TYPES = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k")
# Python ships its own documentation; the docstrings of these stdlib modules are our offline held-out English.
_TEXT_MODULES = ("argparse", "collections", "json", "logging", "subprocess", "unittest", "pathlib", "textwrap",
                 "functools", "itertools", "typing", "dataclasses", "datetime", "decimal", "fractions", "heapq")


def default_text() -> str:
    import importlib
    import inspect

    parts = []
    for name in _TEXT_MODULES:
        mod = importlib.import_module(name)
        parts += [inspect.getdoc(mod) or ""] + [inspect.getdoc(getattr(mod, a)) or "" for a in sorted(dir(mod))
                                                if not a.startswith("_") and callable(getattr(mod, a))]
    return "\n\n".join(p for p in parts if len(p) > 80)


@dataclass
class SweepArgs:
    """What the sweep measures per type."""

    types: tuple = DEFAULT_TYPES  # GGUF types, f16 first (the quality reference)
    pp: int = 512  # prefill test length
    tg: int = 64  # decode test length (at depth 0)
    reps: int = 2  # timed repetitions per speed test
    chunk: int = 256  # tokens per perplexity chunk (second half scored)
    chunks: int = 4  # chunks of text scored
    threads: int = 2  # CPU threads
    text: str = field(default="", repr=False)  # held-out text; empty → Python's stdlib docstrings

    def __post_init__(self):
        self.types = tuple(t.strip().lower() for t in self.types if t.strip())
        if not self.types:
            raise SlmError("--quant lists no types: e.g. --quant f16,q8_0,q4_k_m")
        if self.chunk < 16 or self.chunks < 1:
            raise SlmError("perplexity chunk must be ≥ 16 tokens and chunks ≥ 1")


def make_files(source: Path, types: tuple, out_dir: Path, threads: int, given: dict | None = None,
               progress: Callable[[str], None] = print) -> dict:
    """type → GGUF path: taken from `given` (e.g. the exporter's files) or made with llama.cpp's quantizer from
    `source`."""
    from slm.profiling.llamacpp import quantize

    files = dict(given or {})
    for t in types:
        if t not in files:
            dst = out_dir / f"{source.stem.split('.')[0]}.{t}.gguf"
            if dst.is_file() and dst.stat().st_mtime >= source.stat().st_mtime:  # made before from this source
                files[t] = dst
                continue
            progress(f"quantizing {source.name} → {t}")
            files[t] = quantize(source, dst, t, threads)
    return files


def _score(backend, tokens: list[int], args: SweepArgs, ref: list | None):
    """Perplexity over the scored halves, and KLD(ref ‖ this) per token when reference log-probs are given."""
    nll, kld, out = [], [], []
    half = args.chunk // 2
    for i in range(args.chunks):
        chunk = tokens[i * args.chunk:(i + 1) * args.chunk]
        lp = backend.logprobs(chunk)[half - 1:-1]  # predictions for tokens half … chunk-1
        target = np.asarray(chunk[half:])
        nll.append(-lp[np.arange(len(target)), target])
        if ref is not None:
            p = ref[i].astype(np.float32)
            kld.append((np.exp(p) * (p - lp)).sum(axis=1))
        out.append(lp.astype(np.float16))
    nll = np.concatenate(nll)
    res = {"ppl": float(np.exp(nll.mean())), "scored_tokens": int(nll.size)}
    if ref is not None:
        k = np.concatenate(kld)
        res.update(kld_mean=float(k.mean()), kld_p99=float(np.quantile(k, 0.99)))
    return res, out


def run_sweep(files: dict, args: SweepArgs, progress: Callable[[str], None] = print) -> list[dict]:
    from slm.profiling.llamacpp import LlamaCpp, gguf_contents
    from slm.profiling.protocol import BenchArgs, run_tests

    bench = BenchArgs(pp=(args.pp,), tg=args.tg, depths=(0,), reps=args.reps, threads=args.threads)
    n_ctx = max(bench.max_context(), args.chunk)
    ref, tokens, rows = None, None, []
    for t in args.types:
        with LlamaCpp(files[t], n_ctx, args.threads) as b:
            if tokens is None:
                tokens = b.tokenize(args.text or default_text())
                if len(tokens) < args.chunk * args.chunks:
                    raise SlmError(f"held-out text has {len(tokens)} tokens, fewer than {args.chunk}×{args.chunks}: "
                                   "pass a longer text or fewer chunks")
            progress(f"sweep {t}: speed")
            speed = {r["kind"]: r for r in run_tests(b, bench)}
            progress(f"sweep {t}: perplexity")
            q, lps = _score(b, tokens, args, ref)
            if ref is None:
                ref, ref_type = lps, t
            info = gguf_contents(Path(files[t]))
        rows.append({"type": t, "path": str(files[t]), "size_bytes": info["size_bytes"],
                     "bits_per_weight": info["bits_per_weight"], "tensor_types": info["tensor_types"],
                     "pp_tok_s": speed["prefill"]["tok_s"], "pp_tok_s_std": speed["prefill"]["tok_s_std"],
                     "tg_tok_s": speed["decode"]["tok_s"], "tg_tok_s_std": speed["decode"]["tok_s_std"],
                     "ppl": q["ppl"], "kld_vs_ref": q.get("kld_mean", 0.0), "kld_p99": q.get("kld_p99", 0.0),
                     "reference": ref_type})
    return rows


def answer(rows: list[dict]) -> str:
    """Does a lower bit-width always run faster here? Answered from the rows, in words."""
    by_bits = sorted(rows, key=lambda r: -r["bits_per_weight"])
    lines = []
    for key, what in (("tg_tok_s", "decode"), ("pp_tok_s", "prefill")):
        inv = [(a, b) for a, b in zip(by_bits, by_bits[1:])
               if b[key] < a[key] * (1 - 2 * max(a[key + "_std"] / a[key], 0.01))]
        if not inv:
            lines.append(f"{what}: yes — each step down in bits per weight ran at least as fast (within noise).")
        else:
            ex = "; ".join(f"{b['type']} ({b['bits_per_weight']:.2f} bpw) {b[key]:.1f} tok/s < {a['type']} "
                           f"({a['bits_per_weight']:.2f} bpw) {a[key]:.1f} tok/s" for a, b in inv)
            lines.append(f"{what}: no — fewer bits ran slower in {len(inv)} step(s): {ex}.")
    best = max(rows, key=lambda r: r["tg_tok_s"])
    lines.append(f"fastest decode: {best['type']} at {best['tg_tok_s']:.1f} tok/s ({best['bits_per_weight']:.2f} bpw).")
    return " ".join(lines)
