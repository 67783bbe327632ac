"""Decode and prefill speed of an onnxruntime-genai folder, short: the int4 search's second axis beside KLD.

The profiler's protocol (slm.profiling.protocol, modelled on llama-bench) in miniature, written here because
quant never imports profiling: random token ids, one untimed warm-up, then `reps` timed runs; a figure is the
mean of the per-run tokens/second with its Student-t 95 % interval (slm.stats). Prefill times `prompt` tokens
appended to an empty generator; decode times `tokens` single-token steps (`generate_next_token`, the loop an
app runs) after a one-token prompt, as the profile's tg test at depth 0 does.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from slm.errors import SlmError
from slm.stats import ci95_of


@dataclass
class SpeedArgs:
    """How each candidate is timed."""

    prompt: int = 128  # prefill tokens per timed run (the profile's shortest default pp)
    tokens: int = 32  # decode steps per timed run (the profile's lighter protocol for onnxruntime-genai)
    reps: int = 3  # timed runs per test (llama-bench's default is 5; 3 keeps the search short)
    warmup: int = 1  # untimed runs before them
    threads: int | None = None  # intra-op threads (None: onnxruntime's default, all cores)
    seed: int = 0  # seed of the random token ids

    def __post_init__(self):
        if self.prompt < 1 or self.tokens < 1 or self.reps < 1 or self.warmup < 0:
            raise SlmError("int4 speed test: prompt, tokens and reps must be ≥ 1 and warm-up ≥ 0")
        if self.threads is not None and self.threads < 1:
            raise SlmError(f"threads must be at least 1, got {self.threads}")


def _model(folder: Path, threads: int | None):
    import onnxruntime_genai as og  # onnxruntime_genai is optional: imported only when used

    c = og.Config(str(folder))
    if threads:  # the same thread count for every candidate (and llama.cpp beside them)
        c.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                        "inter_op_num_threads": 1}}}}))
    return og, og.Model(c)


def _summary(tok_s: list[float]) -> dict:
    return {"tok_s": statistics.fmean(tok_s), "ci95": ci95_of(tok_s), "reps": len(tok_s), "samples": tok_s}


def measure_speed(folder: Path, args: SpeedArgs | None = None) -> dict:
    """{"prefill": {tok_s, ci95, reps, samples}, "decode": {...}, "protocol": args} for one folder."""
    args = args or SpeedArgs()
    og, model = _model(Path(folder), args.threads)
    vocab = json.loads((Path(folder) / "genai_config.json").read_text())["model"]["vocab_size"]
    rng = np.random.default_rng(args.seed)

    def generator(total: int):
        p = og.GeneratorParams(model)
        p.set_search_options(max_length=total + 1, do_sample=False)
        return og.Generator(model, p)

    def prefill() -> float:
        g, ids = generator(args.prompt), rng.integers(0, vocab, args.prompt, dtype=np.int32)
        t = time.perf_counter()
        g.append_tokens(ids)
        return time.perf_counter() - t

    def decode() -> float:
        g = generator(1 + args.tokens)
        g.append_tokens(rng.integers(0, vocab, 1, dtype=np.int32))
        t = time.perf_counter()
        for _ in range(args.tokens):
            g.generate_next_token()
        return time.perf_counter() - t

    out = {}
    for name, fn, n in (("prefill", prefill, args.prompt), ("decode", decode, args.tokens)):
        for _ in range(args.warmup):
            fn()
        out[name] = _summary([n / fn() for _ in range(args.reps)])
    return {**out, "protocol": asdict(args)}
