"""Quantization sweep: for each GGUF type, size, bits per weight, what the file really holds, prefill and
decode speed, and quality as perplexity and KL divergence vs the f16 file on the same held-out text.

Quality follows llama.cpp's `llama-perplexity --kl-divergence`: slm.quant's scorer in its `second_half` mode
(the text is cut into chunks of n_ctx tokens and only the second half of each chunk is scored, so every scored
token has at least n_ctx/2 tokens of context); quantized files are made by slm.quant's quantizer and measured
through its llama.cpp wrapper.

KV-cache quality (run_kv_quality): the same weights with each llama.cpp cache type (`type_k`/`type_v`), scored
on the same tokens against the f16 cache — perplexity, KLD with its 95 % interval, and the cache bytes
llama.cpp allocated. Flash attention is on for every type, the f16 reference included: llama.cpp needs it for
a quantized V cache, so only the cache type differs between the runs. The scored windows are `kv_ctx` tokens
long (second half scored), so the quantized cache holds up to kv_ctx tokens when it is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from slm.corpus import heldout_text
from slm.errors import SlmError
from slm.gguf import contents
from slm.profiling.protocol import BenchArgs, run_tests
from slm.quant.llamacpp import LlamaCpp
from slm.quant.quantize import quantize
from slm.score import Scoring, kld, perplexity, score
from slm.stats import ci95_se

DEFAULT_TYPES = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k")


@dataclass
class SweepArgs:
    """What the sweep measures per type."""

    # GGUF type names as slm.gguf.parse_types gives them, the first is the reference
    types: tuple = DEFAULT_TYPES
    pp: int = 512  # prefill test length
    tg: int = 64  # decode test length (at depth 0)
    reps: int = 2  # timed repetitions per speed test
    chunk: int = 256  # tokens per perplexity chunk (second half scored)
    chunks: int = 4  # chunks of text scored
    threads: int = 2  # CPU threads
    kv_types: tuple = ()  # llama.cpp KV-cache types whose quality is measured against f16 (empty: none)
    kv_ctx: int = 2048  # tokens per window of the KV-cache quality (second half scored)
    kv_chunks: int = 2  # windows scored for the KV-cache quality
    # held-out text; empty → slm.corpus.heldout_text (stdlib docstrings)
    text: str = field(default="", repr=False)

    def __post_init__(self):
        self.types = tuple(self.types)
        if not self.types:
            raise SlmError("--quant lists no types: e.g. --quant f16,q8_0,q4_k_m")
        if self.chunk < 16 or self.chunks < 1:
            raise SlmError("perplexity chunk must be ≥ 16 tokens and chunks ≥ 1")
        if self.kv_ctx < 16 or self.kv_chunks < 1:
            raise SlmError("KV-cache quality windows must be ≥ 16 tokens and ≥ 1 of them")

    @property
    def scoring(self) -> Scoring:
        return Scoring("second_half", self.chunk, self.chunks)


def make_files(source: Path, types: tuple, out_dir: Path, threads: int, given: dict | None = None,
               progress: Callable[[str], None] = print) -> dict:
    """type → GGUF path: taken from `given` (e.g. the exporter's files) or made with llama.cpp's quantizer
    from `source`."""
    files = dict(given or {})
    for t in types:
        if t not in files:
            dst = out_dir / f"{source.stem.split('.')[0]}.{t}.gguf"
            # made before from this source
            if dst.is_file() and dst.stat().st_mtime >= source.stat().st_mtime:
                files[t] = dst
                continue
            progress(f"quantizing {source.name} → {t}")
            quantize(source, dst, t, threads=threads)
            files[t] = dst
    return files


def _row(t: str, path: Path, speed: dict, ppl: dict, kl: dict | None, reference: str) -> dict:
    info = contents(path)
    return {"type": t, "path": str(path), "size_bytes": info["size_bytes"],
            "bits_per_weight": info["bits_per_weight"],
            "tensor_types": {k: e["tensors"] for k, e in info["by_type"].items()},
            **{f"{k}_tok_s{suffix}": speed[kind][field] for k, kind in (("pp", "prefill"), ("tg", "decode"))
               for suffix, field in (("", "tok_s"), ("_std", "tok_s_std"), ("_ci95", "ci95"),
                                     ("_reps", "reps"), ("_disturbed", "disturbed"),
                                     ("_other_cpu_share", "other_cpu_share"))},
            "ppl": ppl["perplexity"], "kld_vs_ref": kl["kld_mean"] if kl else 0.0,
            "kld_ci95": ci95_se(kl.get("kld_se")) if kl else 0.0,
            "kld_p99": kl["kld_p99"] if kl else 0.0, "scoring": ppl["mode"], "reference": reference}


def run_sweep(files: dict, args: SweepArgs, progress: Callable[[str], None] = print) -> list[dict]:
    """Speed (the llama-bench protocol) and quality (perplexity, KLD vs the first type) of every type's
    file."""

    bench = BenchArgs(pp=(args.pp,), tg=args.tg, depths=(0,), reps=args.reps, threads=args.threads)
    scoring = args.scoring
    ref, tokens, rows = None, None, []
    for t in args.types:
        with LlamaCpp(files[t], max(bench.max_context(), args.chunk), args.threads) as b:
            if tokens is None:
                tokens = b.tokenize(args.text or heldout_text())
                scoring.windows(tokens)  # a text too short fails here, before any measuring
            progress(f"sweep {t}: speed")
            speed = {r["kind"]: r for r in run_tests(b, bench)}
            progress(f"sweep {t}: perplexity")
            scored = score(b.logits, tokens, scoring)
        kl = kld(ref, scored, scoring) if ref is not None else None
        if ref is None:
            ref, ref_type = scored, t
        rows.append(_row(t, Path(files[t]), speed, perplexity(scored, scoring), kl, ref_type))
    return rows


def run_kv_quality(gguf: Path, weights: str, args: SweepArgs, max_context: int,
                   progress: Callable[[str], None] = print, tokens: list[int] | None = None) -> dict:
    """Perplexity and KLD of each KV-cache type against the f16 cache, same weights, same tokens (`tokens`,
    else args.text or the held-out text tokenized by the GGUF), flash attention on for all (see the module
    docstring); with each type's measured cache bytes."""
    ctx = min(args.kv_ctx, max_context)
    scoring = Scoring("second_half", ctx, args.kv_chunks)
    types = ("f16",) + tuple(t for t in args.kv_types if t != "f16")
    ref, rows = None, []
    for t in types:
        progress(f"KV-cache quality: {t} cache, {args.kv_chunks} window{'s' * (args.kv_chunks > 1)} of {ctx} "
                 "tokens")
        with LlamaCpp(gguf, ctx, args.threads, kv_type=t, flash_attn=True) as b:
            if tokens is None:
                tokens = b.tokenize(args.text or heldout_text())
            scoring.windows(tokens)  # too short a text fails here, before the work
            scored = score(b.logits, tokens, scoring)
            mem = b.memory()
        ppl = perplexity(scored, scoring)
        kl = kld(ref, scored, scoring) if ref is not None else None
        ref = ref if ref is not None else scored
        rows.append({"kv_type": t, "weights": weights, "context": ctx, "ppl": ppl["perplexity"],
                     "ppl_ci95": _ppl_ci(ppl), "kld": kl["kld_mean"] if kl else 0.0,
                     "kld_ci95": ci95_se(kl["kld_se"]) if kl else 0.0,
                     "kld_p99": kl["kld_p99"] if kl else 0.0,
                     "top1_agree": kl["top1_agree"] if kl else 1.0, "positions": ppl["tokens_scored"],
                     "kv_bytes": mem.get("kv_cache"), "kv_cells": mem.get("kv_cells"), "flash_attn": True})
    return {"rows": rows, "reference": "f16", "weights": weights, "source": str(gguf),
            "scoring": scoring.to_dict(),
            "how": "same weights and tokens per cache type; flash attention on for every type (llama.cpp "
                   "needs it for a quantized V cache), so only the cache differs"}


def _ppl_ci(p: dict) -> float | None:
    """Half-width of the perplexity's 95 % interval, from the loss's s.e. (exp of the loss ± its interval)."""
    h = ci95_se(p.get("nll_se"))
    return None if h is None else p["perplexity"] * (math.exp(h) - math.exp(-h)) / 2


def interval(r: dict, key: str) -> tuple[float, float]:
    """(low, high) of a sweep speed: its 95 % interval; rows from before schema 2 (no ci95) get ±2 std, at
    least ±1 % — the rule those reports used."""
    ci = r.get(key + "_ci95")
    if ci is None:
        ci = 2 * max(r.get(key + "_std") or 0.0, 0.01 * r[key])
    return r[key] - ci, r[key] + ci


def _pm(r: dict, key: str) -> str:
    lo, hi = interval(r, key)
    return f"{r[key]:.1f} ± {(hi - lo) / 2:.1f} tok/s"


def answer(rows: list[dict]) -> str:
    """Does a lower bit-width always run faster here? Answered from the rows, in words — a step is called
    slower only when the two 95 % intervals do not overlap and neither was measured under interference."""
    by_bits = sorted(rows, key=lambda r: -r["bits_per_weight"])
    lines = []
    for key, what in (("tg_tok_s", "decode"), ("pp_tok_s", "prefill")):
        pairs = [(a, b) for a, b in pairwise(by_bits) if b[key] < a[key]]
        busy = [(a, b) for a, b in pairs if a.get(key + "_disturbed") or b.get(key + "_disturbed")]
        slower = [(a, b) for a, b in pairs
                  if (a, b) not in busy and interval(b, key)[1] < interval(a, key)[0]]
        noise = [(a, b) for a, b in pairs if (a, b) not in busy and (a, b) not in slower]

        def ex(ps, key=key):
            return "; ".join(f"{b['type']} ({b['bits_per_weight']:.2f} bpw) {_pm(b, key)} vs {a['type']} "
                             f"({a['bits_per_weight']:.2f} bpw) {_pm(a, key)}" for a, b in ps)
        if slower:
            lines.append(f"{what}: no — fewer bits ran slower in {len(slower)} step(s), intervals apart: "
                         f"{ex(slower)}.")
        else:
            lines.append(f"{what}: yes — no step down in bits per weight ran measurably slower.")
        if noise:
            lines.append(f"{what} within noise (intervals overlap, no conclusion): {ex(noise)}.")
        if busy:
            lines.append(f"{what} disturbed (other processes used the CPU; measure again): {ex(busy)}.")
    best = max(rows, key=lambda r: r["tg_tok_s"])
    lines.append(f"fastest decode: {best['type']} at {_pm(best, 'tg_tok_s')} ({best['bits_per_weight']:.2f} "
                 "bpw).")
    return " ".join(lines)
