"""Check an export against its source: the fixed prompts and texts, and logits / greedy tokens per runtime.

Every function here takes token ids so the HF model, the GGUF files (through the one llama.cpp wrapper,
llamacpp.py) and the ONNX folders are compared on exactly the same inputs; perplexity and KLD come from the
one scorer (slm/score.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .llamacpp import LlamaCpp

# Fixed prompts for logits parity: chat markup, code, digits, Unicode (chosen to exercise the tokenizer
# and positions past the first few).
PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "The 3 most common elements in the Earth's crust are oxygen, silicon and",
    "Les modèles de langage — petits ou grands — apprennent à prédire le mot suivant. 日本語も",
]
# Strings for tokenizer parity: code, Unicode, whitespace runs, special tokens.
TOKENIZER_STRINGS = [
    "Hello world",
    "def f(x):\n\treturn x**2  # square\n\n\n    pass",
    "   leading and trailing spaces   ",
    "tabs\t\tand\n\n\nnewlines\r\n",
    "numbers 3 33 333 3333 3.14159 1,000,000",
    "Unicode: naïve café — 😀🦙 你好世界 Привет мир ﷺ",
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after a special token<|im_end|>",
    "I've been 'told he's there, 'RE you sure? ''''```\"\"\"\"......!!!!",
    "",
]
# Held-out text for perplexity and KL divergence: written for this project (not from any training set we
# know of), mixing prose, a list, numbers and code so quantization damage shows in more than one register.
HELD_OUT_TEXT = """\
A lighthouse keeper's log, kept over one winter, records more than the weather. Each entry begins with the
time the lamp was lit and the time it was put out, then the wind, the state of the sea and the ships that
passed. On quiet nights the keeper wrote about repairs: a cracked pane in the lantern room, a pump that
lost its prime, oil that thickened in the cold and had to be warmed before it would flow. Read in order,
the entries show how a small station survived on routine. The lamp was trimmed at noon, the brass was
polished on Tuesdays, and the stores were counted on the first day of every month.

In the second month the supply boat failed to arrive for nineteen days. The keeper rationed paraffin,
burned driftwood in the stove and noted, without complaint, that the biscuits had gone soft. When the boat
finally came, it brought flour, two barrels of oil, a bundle of newspapers six weeks old and a letter from
the district engineer asking why the monthly return was late.

Recipe for the station's bread, as written on the back page:
1. Mix 500 g of flour, 10 g of salt and 7 g of dried yeast.
2. Add 320 ml of warm water and knead for ten minutes.
3. Leave to rise for an hour, shape, rise again for forty minutes.
4. Bake at 220 degrees for thirty-five minutes, or until the loaf sounds hollow.

def daily_average(readings):
    \"\"\"Mean of the non-missing barometer readings of one day, in hectopascals.\"\"\"
    values = [r for r in readings if r is not None]
    if not values:
        return None
    return sum(values) / len(values)

By spring the log grows shorter. The storms ease, the ships return to their summer routes and the keeper's
entries shrink to a line or two: lamp lit, lamp out, wind light from the south-west, sea calm, all well.
"""


# ---- llama.cpp ----------------------------------------------------------------------------------------
def open_gguf(path: Path | str, n_ctx: int = 512, exact: bool = False,
              threads: int | None = None) -> LlamaCpp:
    """The one llama.cpp context wrapper (llamacpp.py) set up for checking: every position's logits, one batch
    per window, flash attention off (as llama-cpp-python's `Llama`, which earlier runs used).

    exact: keep the KV cache in F32 (llama.cpp's default is F16), for parity checks of F32 exports.
    threads: default all cores. On a CPU shared with other jobs use 1: ggml's threads wait for each other
    at every op, and a descheduled thread stalls each step (measured here: 0.4 s per token on a tiny model).
    """
    return LlamaCpp(path, n_ctx, threads or os.cpu_count() or 1, kv_type="f32" if exact else "f16",
                    n_batch=n_ctx, flash_attn=False)


# ---- HF reference -------------------------------------------------------------------------------------
def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch  # torch: deferred, a heavy import

    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].float().numpy()


def hf_greedy(model, ids: list[int], n: int = 32) -> list[int]:
    """Greedy tokens with the KV cache, no EOS stop (same rule as LlamaCpp.greedy)."""
    import torch  # torch: deferred, a heavy import
    from transformers import DynamicCache  # transformers: deferred, a heavy import

    from slm.io import cache_kwarg  # torch: deferred, a heavy import

    kv = {cache_kwarg(model): DynamicCache()}
    out = []
    with torch.no_grad():
        res = model(torch.tensor([list(ids)]), use_cache=True, **kv)
        for _ in range(n):
            tok = int(res.logits[0, -1].argmax())
            out.append(tok)
            res = model(torch.tensor([[tok]]), use_cache=True, **kv)
    return out


def compare_logits(ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """Worst relative error (max |Δ| / max |ref| per prompt), max abs error, top-1 agreement over all
    positions."""
    rel = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(ref, got))
    abs_ = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
    agree = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(ref, got)])
    return {"max_rel_err": rel, "max_abs_err": abs_, "top1_agree": float(agree.mean()),
            "positions": int(agree.size)}


def prompt_ids(tokenizer, vocab_size: int) -> list[list[int]]:
    """Token ids of the fixed prompts; without a tokenizer (tiny test models), fixed pseudo-random ids."""
    if tokenizer is not None:
        return [tokenizer.encode(p) for p in PROMPTS]
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab_size, size=n).tolist() for n in (7, 16, 24, 33)]


# ---- ONNX (onnxruntime-genai) -------------------------------------------------------------------------
def open_onnx(onnx_dir: Path | str):
    import onnxruntime_genai as og  # onnxruntime_genai is optional: imported only when used

    return og.Model(str(onnx_dir))


def onnx_logits(model_or_dir, ids: list[int]) -> np.ndarray:
    """Logits at every position of `ids` from an onnxruntime-genai model (or its folder)."""
    import onnxruntime_genai as og  # onnxruntime_genai is optional: imported only when used

    model = open_onnx(model_or_dir) if isinstance(model_or_dir, (str, Path)) else model_or_dir
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1)
    gen = og.Generator(model, params)
    gen.append_tokens(list(ids))
    out = np.array(gen.get_output("logits"), dtype=np.float32)
    return out.reshape(-1, out.shape[-1])[-len(ids):]


def onnx_greedy(model_or_dir, ids: list[int], n: int = 32) -> list[int]:
    import onnxruntime_genai as og  # onnxruntime_genai is optional: imported only when used

    model = open_onnx(model_or_dir) if isinstance(model_or_dir, (str, Path)) else model_or_dir
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + n)  # stops at EOS like a user would see
    gen = og.Generator(model, params)
    gen.append_tokens(list(ids))
    out = []
    while not gen.is_done() and len(out) < n:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out
