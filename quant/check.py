"""Validate every artifact of one export run against the HF model, on the same token ids.

For each GGUF type and ONNX precision: logits on the fixed prompts vs HF (max relative error, top-1
agreement), perplexity on the held-out text, KL divergence against the f16 GGUF (llama-perplexity's
--kl-divergence idea), and a greedy 32-token generation beside HF's. Plus the GGUF tokenizer's ids vs
HF's on awkward strings. The HF model is loaded once (f32); each runtime model is opened and dropped in turn.
"""

from __future__ import annotations

from pathlib import Path

from . import validate as V

GEN_TOKENS = 32


def _decode(tok, ids: list[int]) -> str:
    return tok.decode(ids) if tok is not None else " ".join(map(str, ids))


def validate_exports(model_dir: Path, ggufs: dict[str, Path], onnx: dict[str, Path], f16_ref: Path | None,
                     text: str, n_ctx: int = 256, threads: int | None = None) -> dict:
    """{"hf": {...}, "gguf": {type: {...}}, "onnx": {precision: {...}}, "tokenizer": {...}, "prompts": [...]}.

    threads: CPU threads for llama.cpp and, while this runs, for torch (restored after).
    """
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _validate(model_dir, ggufs, onnx, f16_ref, text, n_ctx, threads)
    finally:
        torch.set_num_threads(old)


def _validate(model_dir, ggufs, onnx, f16_ref, text, n_ctx, threads) -> dict:
    from transformers import AutoTokenizer

    from slm.io import load_model, read_config

    from .gguf_write import has_tokenizer

    config = read_config(model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir)) if has_tokenizer(model_dir) else None
    n_ctx = min(n_ctx, config.get("max_position_embeddings", n_ctx))
    prompts = V.prompt_ids(tok, config["vocab_size"])
    if tok is not None:
        text_ids = tok.encode(text)
    else:  # tiny test checkpoints: a fixed id sequence stands in for text
        import numpy as np

        text_ids = np.random.default_rng(1).integers(0, config["vocab_size"], size=3 * n_ctx // 2).tolist()
    ctx = max(n_ctx, max(len(p) for p in prompts) + GEN_TOKENS + 1)

    model = load_model(model_dir, "float32").eval()
    ref_logits = [V.hf_logits(model, p) for p in prompts]
    hf_lp = V.chunked_logprobs(lambda w: V.hf_logits(model, w), text_ids, n_ctx)
    hf_gen = V.hf_greedy(model, prompts[0], GEN_TOKENS)
    out: dict = {"hf": {**V.perplexity_of(hf_lp, text_ids, n_ctx), "generation": _decode(tok, hf_gen)},
                 "gguf": {}, "onnx": {}, "n_ctx": n_ctx, "text_tokens": len(text_ids),
                 "prompts": [_decode(tok, p) for p in prompts]}
    del model, hf_lp  # (positions × vocab) floats: keep at most two such arrays alive

    ref_lp = None
    if f16_ref is not None:
        llm = V.open_gguf(f16_ref, ctx, exact=True, threads=threads)
        ref_lp = V.chunked_logprobs(lambda w: V.gguf_logits(llm, w), text_ids, n_ctx)
        if tok is not None:  # every GGUF of the run carries the same tokenizer: check it once
            rows = [{"text": s, "hf": tok.encode(s), "gguf": V.gguf_tokenize(llm, s)} for s in V.TOKENIZER_STRINGS]
            out["tokenizer"] = {"strings": len(rows), "matching": sum(r["hf"] == r["gguf"] for r in rows), "rows": rows}
        del llm

    def score(logits_fn, greedy_fn) -> dict:
        got = [logits_fn(p) for p in prompts]
        lp = V.chunked_logprobs(logits_fn, text_ids, n_ctx)
        gen = greedy_fn(prompts[0])
        res = {**V.compare_logits(ref_logits, got), **V.perplexity_of(lp, text_ids, n_ctx),
               "generation": _decode(tok, gen), "same_generation": gen == hf_gen[:len(gen)]}
        if ref_lp is not None:
            res["kld"] = V.kld_of(ref_lp, lp)
        return res

    for t, path in ggufs.items():
        llm = V.open_gguf(path, ctx, exact=True, threads=threads)  # F32 KV cache: only the weights differ between types
        out["gguf"][t] = score(lambda ids: V.gguf_logits(llm, ids), lambda ids: V.gguf_greedy(llm, ids, GEN_TOKENS))
        del llm
    for p, d in onnx.items():
        # A runtime failure of one ONNX folder is a finding to report, not a reason to throw away the others
        # (seen: fp16 graphs built for the CPU EP fail in onnxruntime 1.32 at the first decode step).
        try:
            m = V.open_onnx(d)
            out["onnx"][p] = score(lambda ids: V.onnx_logits(m, ids), lambda ids: V.onnx_greedy(m, ids, GEN_TOKENS))
            del m
        except RuntimeError as e:
            out.setdefault("failed", {})[f"onnx {p}"] = str(e).splitlines()[0][:300]
    return out
