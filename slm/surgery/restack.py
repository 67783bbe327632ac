"""Write a model whose layers are a re-stacking of the source's layers (shared by expand and upscale).

Streams: each output tensor is read from the memory-mapped source, optionally zeroed, and handed to a
shard writer. The whole model is never in memory.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import torch

from slm.errors import SlmError
from slm.guard import atomic_dir
from slm.io import DTYPES, ShardedWriter, TensorReader, copy_aux_files, write_config
from slm.record import write_record
from slm.spec import check_supported
from slm.surgery.layers import check_layer_tensors, compose_record, layer_name, remap_config, split_layer_name
from slm.surgery.report import surgery_figures, write_surgery_report

# In a LLaMA Pro copy these are zeroed so the block adds exactly 0 to the residual stream
# (Wu et al. 2024, "LLaMA Pro", Sec. 3.2: identity blocks via zero-initialised output projections).
ZEROED = ("self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias")


def restack(model: Path, out: Path, src: list[int], new_layers: list[int], step: dict, *, kind: str,
            zero_new: bool, dtype: str | None = None, force: bool = False, max_shard_bytes: int | None = None,
            parity: bool = False, after: Callable[[Path, dict], None] | None = None,
            report: Callable[[Path, str, dict, dict], object] = write_surgery_report) -> dict:
    """Write `out` with layer j = source layer src[j], recording `new_layers` as new; with zero_new the
    ZEROED tensors of the new layers are 0 (LLaMA Pro identity copies). `after(tmp, result)` runs on the
    written checkpoint before the record (prune measures perplexity there); `report` writes report.html."""
    reader = TensorReader(model)
    config = reader.config
    check_supported(config)
    n = config["num_hidden_layers"]
    check_layer_tensors(reader.keys(), n)
    if dtype is not None and dtype not in DTYPES:
        raise SlmError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    record = compose_record(config, src, sorted(new_layers), step)
    new_config = remap_config(config, src, record)
    if dtype:
        new_config["torch_dtype"] = new_config["dtype"] = dtype

    with atomic_dir(out, force, [model]) as tmp:
        writer = ShardedWriter(tmp, **({"max_shard_bytes": max_shard_bytes} if max_shard_bytes else {}))
        zeroed = _write_layers(reader, writer, src, set(new_layers) if zero_new else set(), dtype)
        files = writer.close()
        write_config(tmp, new_config)
        aux = copy_aux_files(model, tmp)
        result = {
            "num_layers": {"before": n, "after": len(src)},
            "record": record,
            "zeroed_tensors": zeroed,
            "files": [f.name for f in files],
            "aux_files": aux,
            "bytes": writer.total_bytes,
        }
        if parity:
            result["parity"] = parity_check(model, tmp)
        result["figures"] = surgery_figures(step, result)
        if after is not None:
            after(tmp, result)
        write_record(tmp, kind, step, inputs={"model": model}, result=result, figures=result["figures"])
        report(tmp, kind, step, result)
    return result


def _write_layers(reader: TensorReader, writer: ShardedWriter, src: list[int], zero_layers: set[int],
                  dtype: str | None) -> list[str]:
    """Embeddings, then output layer j = source layer src[j] (ZEROED tensors of `zero_layers` zeroed), then
    the final norm and head, each cast to `dtype`; returns the names of the zeroed tensors."""
    by_layer: dict[int, list[str]] = {}
    others: list[str] = []
    for k in reader.keys():
        i, rest = split_layer_name(k)
        (others if i is None else by_layer.setdefault(i, [])).append(rest if i is not None else k)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(DTYPES[dtype]) if dtype else t

    zeroed: list[str] = []
    embed_first = sorted(others, key=lambda k: (not k.startswith("model.embed"), k))
    for k in [k for k in embed_first if k.startswith("model.embed")]:
        writer.add(k, cast(reader.get(k)))
    for j, s in enumerate(src):
        for rest in sorted(by_layer[s]):
            t = cast(reader.get(layer_name(s, rest)))
            if j in zero_layers and rest in ZEROED:
                t = torch.zeros_like(t)
                zeroed.append(layer_name(j, rest))
            writer.add(layer_name(j, rest), t)
    for k in [k for k in embed_first if not k.startswith("model.embed")]:
        writer.add(k, cast(reader.get(k)))
    return zeroed


PARITY_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Block expansion adds identity blocks to a pretrained language model so that",
)


def parity_check(original: Path, expanded: Path, prompts=PARITY_PROMPTS) -> dict:
    """fp32 logits of both models on fixed prompts: max abs difference and whether they are bit-identical.

    Loads one model at a time, so peak memory is one fp32 model plus logits."""

    from transformers import AutoTokenizer  # transformers: deferred, a heavy import

    from slm.io import load_model  # torch: deferred, a heavy import

    try:
        tok = AutoTokenizer.from_pretrained(str(original))
        batches = [tok(p, return_tensors="pt").input_ids for p in prompts]
    except (OSError, ValueError):  # no tokenizer saved: use fixed token ids
        g = torch.Generator().manual_seed(0)
        vocab = TensorReader(original).config["vocab_size"]
        batches = [torch.randint(0, vocab, (1, 16), generator=g) for _ in prompts]

    def logits_of(path):
        m = load_model(path, "float32").eval()
        with torch.no_grad():
            out = [m(ids).logits for ids in batches]
        del m
        gc.collect()
        return out

    a, b = logits_of(original), logits_of(expanded)
    diffs = [(x - y).abs().max().item() if x.shape == y.shape else float("inf") for x, y in zip(a, b)]
    return {"prompts": len(batches), "max_abs_diff": max(diffs),
            "bit_identical": all(torch.equal(x, y) for x, y in zip(a, b))}
