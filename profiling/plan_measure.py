"""`slm plan --measure`: every candidate's quality measured as it would run, so the plan can recommend from
measurements alone.

For each depth the plan considers (the model as it is, and with --prune its ShortGPT prunes, made by
slm.surgery.prune), the model is written as an f16 GGUF (slm.quant.gguf_write), quantized to each GGUF type
(slm.quant.quantize) and scored with each KV-cache type on the same held-out tokens against the ORIGINAL
model's f16 GGUF with the f16 cache — so a pruned candidate's KLD carries the pruning as well as the
quantization. Scoring is the sweep's (slm.score, second half of each window), flash attention on in every
run (llama.cpp needs it for a quantized V cache). LLaMA Pro expansions are not measured: their new blocks are
identity copies until trained, so the plan leaves them "unknown".

Cost: (1 + prunes) × types × KV types runs of `chunks` windows of `ctx` tokens; seconds on a 135M model, a
progress bar (tqdm, on a terminal) for big ones.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from slm.corpus import heldout_text
from slm.errors import SlmError
from slm.score import Scoring, kld, perplexity, score
from slm.stats import ci95_se

# windows the measurement scores (second half of each): the sweep's window length, fewer of them
CTX, CHUNKS = 256, 2


def check_weights(source: Path | str) -> Path:
    """The HF folder a measurement needs; a config alone or a GGUF is a one-line error."""
    p = Path(source)
    if not p.is_dir() or not any(p.glob("*.safetensors")):
        raise SlmError(f"--measure needs weights: quality is measured by running the model, and {p} is "
                       f"{'a config without weights' if p.suffix == '.json' else 'not an HF model folder'}; "
                       "pass the model folder")
    return p


def measure(source: Path | str, layers: int, depths: list[tuple[int, str]], types: tuple, kv_types: tuple,
            threads: int = 1, tokens: list[int] | None = None, ctx: int = CTX, chunks: int = CHUNKS,
            progress: Callable[[str], None] = print) -> list[dict]:
    """[{layers, variant, type, kv_type, kld, kld_ci95, ppl, positions}] for every measured candidate."""
    # deferred: torch, llama.cpp and tqdm load only when --measure runs, not for every `slm plan`
    from tqdm import tqdm  # noqa: I001
    from slm.quant.gguf_write import write_gguf
    from slm.quant.llamacpp import LlamaCpp
    from slm.quant.quantize import quantize
    from slm.surgery.prune import PruneArgs, prune

    source = check_weights(source)
    todo = [(d, how) for d, how in depths if how == "as is" or how.startswith("prune")]
    sc = Scoring("second_half", ctx, chunks)
    out = []
    with tempfile.TemporaryDirectory(prefix="slm-measure-") as work:
        work = Path(work)
        ref_gguf = write_gguf(source, work / "ref.f16.gguf", "f16")
        with LlamaCpp(ref_gguf, ctx, threads, flash_attn=True) as b:
            tokens = tokens if tokens is not None else b.tokenize(heldout_text())
            sc.windows(tokens)  # too short a text fails here, before the work
            ref = score(b.logits, tokens, sc)
        bar = tqdm(total=len(todo) * len(types) * len(kv_types), desc="measuring candidates", disable=None)
        for d, how in todo:
            model = source
            if how != "as is":
                progress(f"measure: {how} ({d} layers)")
                model = work / f"prune-{layers - d}"
                prune(source, model, PruneArgs(drop=layers - d))
            f16 = ref_gguf if how == "as is" else write_gguf(model, work / f"{model.name}.f16.gguf", "f16")
            for t in types:
                g = f16 if t == "f16" else work / f"{model.name}.{t}.gguf"
                if t != "f16":
                    quantize(f16, g, t, threads=threads)
                for kvt in kv_types:
                    with LlamaCpp(g, ctx, threads, kv_type=kvt, flash_attn=True) as b:
                        s = score(b.logits, tokens, sc)
                    k = kld(ref, s, sc)
                    out.append({"layers": d, "variant": how, "type": t, "kv_type": kvt, "kld": k["kld_mean"],
                                "kld_ci95": ci95_se(k["kld_se"]), "ppl": perplexity(s, sc)["perplexity"],
                                "positions": k["positions"], "scoring": sc.what})
                    bar.update()
                if g != f16:
                    g.unlink()
        bar.close()
    return out
