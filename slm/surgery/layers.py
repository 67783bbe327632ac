"""Layer bookkeeping shared by expand, upscale and merge.

A surgery is described by `source_layers`: for each layer of the output, the index of the layer of the
*original* model it came from, plus `new_layers`: the output positions that are new (copies). That record
is written into config.json (key `slm_surgery`) and slm.json, so training freezes by record and a merge
can map an instruction residual onto an expanded model.
"""

from __future__ import annotations

import re

from slm.errors import SlmError

LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
RECORD_KEY = "slm_surgery"


def split_layer_name(name: str) -> tuple[int | None, str]:
    """'model.layers.3.mlp.down_proj.weight' → (3, 'mlp.down_proj.weight'); other tensors → (None, name)."""
    m = LAYER_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


def layer_name(i: int, rest: str) -> str:
    return f"model.layers.{i}.{rest}"


def prior_record(config: dict) -> dict:
    """The surgery record of a model, or the identity record of an untouched one."""
    rec = config.get(RECORD_KEY)
    if rec:
        return rec
    n = config["num_hidden_layers"]
    return {"original_num_layers": n, "source_layers": list(range(n)), "new_layers": [], "history": []}


def compose_record(config: dict, src: list[int], new: list[int], step: dict) -> dict:
    """Record of applying `src`/`new` (indices into this model) on top of whatever was done before, so that
    source_layers always points into the original model and earlier new layers stay new."""
    prev = prior_record(config)
    prev_new = set(prev["new_layers"])
    return {
        "original_num_layers": prev["original_num_layers"],
        "source_layers": [prev["source_layers"][s] for s in src],
        "new_layers": sorted(set(new) | {j for j, s in enumerate(src) if s in prev_new}),
        "history": prev.get("history", []) + [step],
    }


# Config keys holding one entry per decoder layer, by name (transformers' configuration_*.py): Qwen2/Qwen3/
# SmolLM3 `layer_types` (full_attention / sliding_attention), SmolLM3 and Llama-4 `no_rope_layers` (1: RoPE,
# 0: NoPE), `sliding_window_layers`-style lists of per-layer windows. Every other key is copied as is: a
# list that merely has as many entries as there are layers (eos_token_id: [2, 0, 5]) is not per-layer.
PER_LAYER_KEYS = ("layer_types", "no_rope_layers", "sliding_window_layers", "attention_window_layers")


def remap_config(config: dict, src: list[int], record: dict) -> dict:
    """New config with num_hidden_layers and every per-layer list (PER_LAYER_KEYS) remapped through `src`.

    Qwen2's `max_window_layers` (layers below it use full attention) becomes the count of new layers whose
    source is below it. A per-layer key whose length is not the layer count is refused: remapping it would
    be a guess.
    """
    n = config["num_hidden_layers"]
    out = dict(config)
    for k in PER_LAYER_KEYS:
        v = config.get(k)
        if v is None:
            continue
        if not isinstance(v, list) or len(v) != n:
            raise SlmError(f"config.json has {k} with {len(v) if isinstance(v, list) else repr(v)} entries "
                           f"but num_hidden_layers={n}: fix the config so it has one entry per layer")
        out[k] = [v[s] for s in src]
    if isinstance(config.get("max_window_layers"), int) and config["max_window_layers"] < n:
        out["max_window_layers"] = sum(1 for s in src if s < config["max_window_layers"])
    out["num_hidden_layers"] = len(src)
    out[RECORD_KEY] = record
    return out


def layer_table(record: dict) -> list[dict]:
    """One row per output layer, for reports."""
    new = set(record["new_layers"])
    return [{"layer": j, "source": s, "new": j in new} for j, s in enumerate(record["source_layers"])]


def check_layer_tensors(names: list[str], n_layers: int) -> None:
    seen = {split_layer_name(k)[0] for k in names} - {None}
    if seen != set(range(n_layers)):
        raise SlmError(f"checkpoint has layers {sorted(seen)[:5]}... but config says "
                       f"num_hidden_layers={n_layers}: the checkpoint is inconsistent")
