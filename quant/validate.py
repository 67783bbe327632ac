"""Validate every artifact of one export run against the HF model, on the same token ids.

For each GGUF type and ONNX precision: logits on the fixed prompts vs HF (max relative error, top-1
agreement), perplexity on the held-out text and KL divergence against the f16 GGUF (both from the one
scorer, slm/score.py, in its `all` mode: every token of non-overlapping windows), and a greedy 32-token
generation beside HF's; where an artifact's greedy tokens leave HF's, the first such token with the
reference's top-2 there (a near tie when that gap is within what the artifact moves such gaps by). Plus
the GGUF tokenizer's ids vs HF's on awkward strings. The HF model is loaded
once (f32); each runtime model is opened and dropped in turn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np  # tiny test checkpoints: a fixed id sequence stands in for text

from slm.score import Scoring, kld, perplexity, score
from slm.spec import spec_from_config

from . import runtimes as rt

GEN_TOKENS = 32


def _decode(tok, ids: list[int]) -> str:
    return tok.decode(ids) if tok is not None else " ".join(map(str, ids))


def validate_exports(model_dir: Path, ggufs: dict[str, Path], onnx: dict[str, Path], f16_ref: Path | None,
                     text: str, n_ctx: int = 256, threads: int | None = None,
                     exact_ctx: int | None = None) -> dict:
    """{"hf": {...}, "gguf": {type: {...}}, "onnx": {precision: {...}}, "tokenizer": {...}, "prompts": [...],
    "failed": {what: why}, "flagged": {what: why}}.

    threads: CPU threads for llama.cpp and, while this runs, for torch (restored after).
    exact_ctx: the context within which llama.cpp computes what HF does (a sliding window it does not apply,
    gguf_arch.ArchPlan): prompts, generations and scored windows stay within it, and one sequence beyond it
    is compared too — a difference there is flagged, never passed.
    """
    import torch  # torch: deferred, a heavy import

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _validate(model_dir, ggufs, onnx, f16_ref, text, n_ctx, threads, exact_ctx)
    finally:
        torch.set_num_threads(old)


def text_ids(model_dir: Path, text: str, vocab_size: int, n_ctx: int) -> list[int]:
    """The held-out text's token ids as validation scores them (the model's tokenizer, or fixed ids without
    one)."""
    from transformers import AutoTokenizer  # transformers: deferred, a heavy import

    from .gguf_write import has_tokenizer  # torch: deferred, a heavy import

    tok = AutoTokenizer.from_pretrained(str(model_dir)) if has_tokenizer(model_dir) else None
    return _text_ids(tok, text, vocab_size, n_ctx)


def _text_ids(tok, text: str, vocab_size: int, n_ctx: int) -> list[int]:
    if tok is not None:
        return tok.encode(text)

    return np.random.default_rng(1).integers(0, vocab_size, size=3 * n_ctx // 2).tolist()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


GAP_QUANTILE = 90  # the gap noise is this percentile of |Δ top-2 gap| over the prompts' positions


def gap_noise(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """How much the artifact moves the reference's top-2 logit gap: the GAP_QUANTILE-th percentile over every
    position of the fixed prompts of |(got[t1] − got[t2]) − (ref[t1] − ref[t2])|, t1/t2 the reference's top
    two. A gap smaller than this is one the artifact swaps at one position in ten or more."""
    out = []
    for a, b in zip(ref, got):
        top = np.argsort(a, axis=-1)[:, -2:]
        rows = np.arange(len(a))
        gap_a = a[rows, top[:, 1]] - a[rows, top[:, 0]]
        gap_b = b[rows, top[:, 1]] - b[rows, top[:, 0]]
        out.append(np.abs(gap_b - gap_a))
    return float(np.percentile(np.concatenate(out), GAP_QUANTILE))


def divergence(ref: list[int], got: list[int], ref_logp: np.ndarray, noise: float, text) -> dict | None:
    """Where greedy tokens `got` first leave the reference's `ref` (None: they never do, a shorter `got`
    included), with the reference's top-2 there. `ref_logp[i]`: the reference's log-probabilities before
    `ref[i]`; `noise`: the artifact's gap noise (gap_noise); `text(id)` → str.

    A near tie: the reference's top-2 logit gap is below the artifact's gap noise, so a perturbation this
    artifact is measured to make at one position in ten can swap them — the flip says nothing about a broken
    export, and every token after it follows a different text.
    """
    at = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), None)
    if at is None:
        return None
    lp = ref_logp[at]
    top = np.argsort(lp)[::-1][:2]
    gap = float(lp[top[0]] - lp[top[1]])  # log p1 − log p2 = the logit gap (softmax shares one normaliser)
    return {"token": at, "reference": text(ref[at]), "artifact": text(got[at]),
            "top2": [{"text": text(int(t)), "p": float(np.exp(lp[t]))} for t in top],
            "artifact_p": float(np.exp(lp[got[at]])), "logit_gap": gap, "gap_noise": float(noise),
            "near_tie": gap < noise}


def divergence_text(d: dict | None) -> str:
    """One line for the report: where and how close the reference's choice was."""
    if d is None:
        return "same tokens as HF"
    t1, t2 = d["top2"]
    line = (f"token {d['token'] + 1}: HF {t1['text']!r} p={t1['p']:.3f}, this file {d['artifact']!r} "
            f"(HF p={d['artifact_p']:.3f}); HF's top-2 {t1['p']:.3f} vs {t2['p']:.3f}, logit gap "
            f"{d['logit_gap']:.3f}")
    noise = (f"the {GAP_QUANTILE}th percentile of how much this file moves HF's top-2 gaps, "
             f"{d['gap_noise']:.3f}")
    if d["near_tie"]:
        return f"{line} — a near tie: below {noise}, so the texts part there without the export being wrong"
    return f"{line} — above {noise}: a real change of this file's choice"


def _validate(model_dir, ggufs, onnx, f16_ref, text, n_ctx, threads, exact_ctx) -> dict:
    from transformers import AutoTokenizer  # transformers: deferred, a heavy import

    from slm.io import load_model, read_config  # torch: deferred, a heavy import

    from .gguf_write import has_tokenizer  # torch: deferred, a heavy import

    # ---- the HF reference: logits on the prompts, perplexity on the text, one greedy generation ------------
    spec = spec_from_config(read_config(model_dir))
    tok = AutoTokenizer.from_pretrained(str(model_dir)) if has_tokenizer(model_dir) else None
    limit = min(spec.max_context, exact_ctx or spec.max_context)
    gen_tokens = min(GEN_TOKENS, limit // 2)
    scoring = Scoring("all", min(n_ctx, limit))
    prompts = [p[: limit - gen_tokens] for p in rt.prompt_ids(tok, spec.vocab)]
    text_ids = _text_ids(tok, text, spec.vocab, scoring.n_ctx)
    # beyond exact_ctx: one sequence reaching past it (text ids, repeated when the text is short)
    beyond = None
    if exact_ctx is not None and exact_ctx < spec.max_context:
        n = min(spec.max_context, max(2 * exact_ctx, exact_ctx + 64))
        beyond = (text_ids * (n // max(len(text_ids), 1) + 1))[:n]
    ctx = max(scoring.n_ctx, max(len(p) for p in prompts) + gen_tokens + 1, len(beyond or []))
    model = load_model(model_dir, "float32").eval()
    ref_logits = [rt.hf_logits(model, p) for p in prompts]
    ref_beyond = rt.hf_logits(model, beyond)[exact_ctx:] if beyond else None
    hf_gen = rt.hf_greedy(model, prompts[0], gen_tokens)
    # the reference's next-token log-probabilities at every greedy step: row i is what HF saw before hf_gen[i]
    steps = _log_softmax(rt.hf_logits(model, prompts[0] + hf_gen[:-1])[len(prompts[0]) - 1:])
    hf_ppl = perplexity(score(lambda w, model=model: rt.hf_logits(model, w), text_ids, scoring), scoring)
    out: dict = {"hf": {**hf_ppl, "generation": _decode(tok, hf_gen)}, "gguf": {}, "onnx": {},
                 "n_ctx": scoring.n_ctx, "scoring": scoring.to_dict(), "text_tokens": len(text_ids),
                 "prompts": [_decode(tok, p) for p in prompts], "exact_ctx": exact_ctx}
    del model  # (positions × vocab) floats: keep at most two such arrays alive

    # ---- the f16 GGUF: the KLD reference, and the GGUF tokenizer checked once (every file carries the same)
    ref = None
    if f16_ref is not None:
        with rt.open_gguf(f16_ref, ctx, exact=True, threads=threads) as llm:
            ref = score(llm.logits, text_ids, scoring)
            if tok is not None:
                rows = [{"text": s, "hf": tok.encode(s), "gguf": llm.tokenize(s, special=True)}
                        for s in rt.TOKENIZER_STRINGS]
                out["tokenizer"] = {"strings": len(rows), "matching": sum(r["hf"] == r["gguf"] for r in rows),
                                    "rows": rows}
                bad = [r["text"] for r in rows if r["hf"] != r["gguf"]]
                if bad:  # every GGUF carries this tokenizer: a mismatch fails the export, not one file
                    out.setdefault("failed", {})["tokenizer"] = (
                        f"the GGUF tokenizer encodes {len(bad)} of {len(rows)} test strings differently from "
                        f"HF (first: {bad[0][:40]!r}): the tokenizer does not belong to this architecture's "
                        "pre-tokenizer; pass --pre-tokenizer with the right one or fix the checkpoint")

    def check(name, logits_fn, greedy_fn) -> dict:
        got = [logits_fn(p) for p in prompts]
        scored = score(logits_fn, text_ids, scoring)
        gen = greedy_fn(prompts[0])
        res = {**rt.compare_logits(ref_logits, got), **perplexity(scored, scoring),
               "generation": _decode(tok, gen), "same_generation": gen == hf_gen[:len(gen)]}
        res["gap_noise"] = gap_noise(ref_logits, got)
        res["divergence"] = divergence(hf_gen, gen, steps, res["gap_noise"], lambda i: _decode(tok, [i]))
        if ref is not None:
            res["kld"] = kld(ref, scored, scoring)
        if beyond:
            b = rt.compare_logits([ref_beyond], [logits_fn(beyond)[exact_ctx:]])
            res["beyond_exact_ctx"] = {**b, "from": exact_ctx, "to": len(beyond)}
            # beyond exact_ctx llama.cpp computes another function: any difference above this model's own
            # within-context error is flagged (the within-context error is the export's noise floor)
            if b["max_rel_err"] > max(10 * res["max_rel_err"], 1e-3):
                out.setdefault("flagged", {})[name] = (
                    f"differs from HF beyond {exact_ctx} tokens: largest relative logit error "
                    f"{b['max_rel_err']:.3g} at positions {exact_ctx}–{len(beyond)} (within: "
                    f"{res['max_rel_err']:.3g}), top-1 agreement {b['top1_agree']:.0%}")
        return res

    # ---- every artifact in turn ----------------------------------------------------------------------------
    for t, path in ggufs.items():
        with rt.open_gguf(path, ctx, exact=True, threads=threads) as llm:  # F32 KV: only the weights differ
            out["gguf"][t] = check(f"gguf {t}", llm.logits, lambda ids: llm.greedy(ids, gen_tokens))
    for p, d in onnx.items():
        # A runtime failure of one ONNX folder is a finding to report, not a reason to throw away the others
        # (seen: fp16 graphs built for the CPU EP fail in onnxruntime 1.32 at the first decode step).
        try:
            m = rt.open_onnx(d)
            out["onnx"][p] = check(f"onnx {p}", lambda ids, m=m: rt.onnx_logits(m, ids),
                                   lambda ids, m=m: rt.onnx_greedy(m, ids, gen_tokens))
            del m
        except RuntimeError as e:
            out.setdefault("failed", {})[f"onnx {p}"] = str(e).splitlines()[0][:300]
    return out
