"""Merges, streamed tensor by tensor: the methods are in slm.surgery.merge_methods (one class each, one list);
this module reads the recipe, checks every shape before writing, and streams the merged tensors.

An instruction residual may target an *expanded* model: the residual of base layer j goes to every non-new
layer whose recorded source is j (the surgery record), new layers get none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from slm import recipe as recipe_io
from slm.errors import SlmError
from slm.figure import Figure, analytic, setting
from slm.guard import atomic_dir, guard_output
from slm.io import DTYPES, ShardedWriter, TensorReader, copy_aux_files, write_config
from slm.record import write_record
from slm.spec import spec_from_config
from slm.surgery.layers import prior_record, split_layer_name
from slm.surgery.merge_methods import METHODS, MergeMethod, get_method
from slm.surgery.merge_ops import dot64, t_for_layer
from slm.surgery.report import write_merge_report

EMBEDDING_POLICIES = ("refuse", "skip", "slice")
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


@dataclass
class MergeRecipe:
    method: str  # one of slm.surgery.merge_methods.METHODS
    # [{model: PATH, weight: W}]: linear/task_arithmetic; slerp: 2 models
    models: list = field(default_factory=list)
    base: str | None = None  # task_arithmetic: the common base; instruction_residual: the base of the pair
    instruct: str | None = None  # instruction_residual: instruction-tuned model of the same base
    cpt: str | None = None  # instruction_residual: the continued-pretrained (possibly expanded) model
    t: float | list = 0.5  # slerp: 0 → first model, 1 → second; a list is spread evenly over the layers
    alpha: float = 1.0  # instruction_residual: scale of the residual
    normalize: bool = True  # linear: divide by the sum of weights
    # vocab-size mismatch: refuse | skip (keep the target's) | slice (merge shared rows)
    embeddings: str = "refuse"
    dtype: str | None = None  # output dtype; None keeps the target's
    slerp_eps: float = 0.9995  # |cos| above this → linear interpolation (mergekit's DOT_THRESHOLD)

    def __post_init__(self):
        get_method(self.method)  # one line naming the methods there are
        if self.embeddings not in EMBEDDING_POLICIES:
            raise SlmError(f"embeddings: {self.embeddings!r} is not one of {', '.join(EMBEDDING_POLICIES)}")
        if self.dtype is not None and (not isinstance(self.dtype, str) or self.dtype not in DTYPES):
            raise SlmError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        for key in ("base", "instruct", "cpt"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise SlmError(f"`{key}: {getattr(self, key)!r}` is not a path: write `{key}: models/NAME`")
        if not isinstance(self.normalize, bool):
            raise SlmError(f"normalize: {self.normalize!r}: use true or false")
        if not _is_number(self.alpha):
            raise SlmError(f"alpha: {self.alpha!r} is not a finite number: write e.g. alpha: 1.0")
        if not _is_number(self.slerp_eps) or not 0 < self.slerp_eps <= 1:
            raise SlmError(f"slerp_eps must be in (0, 1] (got {self.slerp_eps})")
        self.models = [_model_entry(m, k) for k, m in enumerate(_listed(self.models))]
        self.t = _check_t(self.t)
        self.how.check(self)

    @property
    def how(self) -> MergeMethod:
        """The method object (slm.surgery.merge_methods)."""
        return METHODS[self.method]

    def inputs(self) -> list[str]:
        """Every model the merge reads: none may be its output."""
        return [p for p in (self.cpt, self.base, self.instruct) if p] + [m["model"] for m in self.models]

    def target(self) -> str:
        """The model whose config, tensor list and tokenizer the output takes."""
        return self.how.target(self)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _listed(models) -> list:
    if not isinstance(models, list):
        raise SlmError(f"`models: {models!r}` is not a list: write `models: [{{model: PATH, weight: 1}}, "
                       "...]`")
    return models


def _model_entry(m, k: int) -> dict:
    """One `models:` entry, a path or {model: PATH, weight: W}, as {"model": str, "weight": float}."""
    m = {"model": m} if isinstance(m, str) else m
    if not isinstance(m, dict) or not isinstance(m.get("model"), str):
        raise SlmError(f"`models` entry {k + 1} ({m!r}) needs a `model:` path: write "
                       f"`{{model: PATH, weight: 1}}`")
    unknown = sorted(set(m) - {"model", "weight"})
    if unknown:
        raise SlmError(f"`models` entry {k + 1} has an unknown key `{unknown[0]}`: an entry holds `model` "
                       "and `weight`")
    w = m.get("weight", 1.0)
    if not _is_number(w):
        raise SlmError(f"`models` entry {k + 1}: weight {w!r} is not a finite number: write e.g. `weight: "
                       "0.5`")
    return {"model": m["model"], "weight": float(w)}


def _check_t(t) -> float | list:
    """slerp's t: a number in [0, 1], or a non-empty list of them spread over depth."""
    ts = t if isinstance(t, list) else [t]
    if not ts or not all(_is_number(x) and 0 <= x <= 1 for x in ts):
        raise SlmError("slerp t must be in [0, 1]: a number or a list of them, e.g. t: 0.5 or t: [0, 0.5, "
                       f"1] (got {t!r})")
    return t


# Recipe keys that hold model paths: relative ones are read from the recipe file's folder.
PATH_KEYS = ("base", "instruct", "cpt", "models[].model")


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> MergeRecipe:
    """A MergeRecipe from a YAML recipe and key=value overrides (parsed by slm.recipe, as every verb's), with
    model paths resolved relative to the recipe file."""
    return recipe_io.load_recipe(MergeRecipe, path, overrides or (), paths=PATH_KEYS, models=PATH_KEYS)


class _Source:
    """A model being merged: reads tensors, serving lm_head from the embedding when it is tied."""

    def __init__(self, path: str):
        if not Path(path).is_dir():
            raise SlmError(f"merge input {path} is not a checkpoint folder")
        self.path = path
        self.r = TensorReader(path)
        self.layers = spec_from_config(self.r.config).layers  # checks the architecture and shape keys too

    def name_for(self, name: str) -> str:
        if name == "lm_head.weight" and name not in self.r and "model.embed_tokens.weight" in self.r:
            return "model.embed_tokens.weight"
        return name

    def get(self, name: str) -> torch.Tensor:
        return self.r.get(self.name_for(name)).float()

    def shape(self, name: str) -> list[int]:
        n = self.name_for(name)
        if n not in self.r:
            raise SlmError(f"{self.path} has no tensor {name}: the models do not share an architecture")
        return self.r.shape(n)


def _plan_layers(recipe: MergeRecipe, target: _Source, others: list[_Source]) -> dict[int, int | None]:
    """For each target layer, the layer index to read in the other models (None: leave the target's as is)."""
    n = target.layers
    if not recipe.how.through_record:
        for o in others:
            if o.layers != n:
                raise SlmError(f"layer counts differ ({target.path}: {n}, {o.path}: {o.layers}): merge "
                               "models of the same depth (an instruction residual may target an expanded "
                               "model)")
        return {i: i for i in range(n)}
    base_layers = others[0].layers
    if others[1].layers != base_layers:
        raise SlmError(f"base and instruct have different layer counts ({base_layers} vs {others[1].layers})")
    if n == base_layers and "slm_surgery" not in target.r.config:
        return {i: i for i in range(n)}
    rec = prior_record(target.r.config)
    if rec["original_num_layers"] != base_layers:
        raise SlmError(f"cpt model has {n} layers and its surgery record says it came from "
                       f"{rec['original_num_layers']} layers, but base/instruct have {base_layers}: use the "
                       "base it was expanded from")
    new = set(rec["new_layers"])
    return {i: (None if i in new else s) for i, s in enumerate(rec["source_layers"])}


def merge(recipe: MergeRecipe, out: Path | str, force: bool = False) -> dict:
    """Write the merged checkpoint to `out` (+ slm.json, report.html) and return the result record. `out` is
    guarded from the start (slm.guard): never one of the models read, even with --force; writable; locked."""
    out = Path(out)
    with guard_output(out, recipe.inputs(), force):
        return _merge(recipe, out, force)


def _merge(recipe: MergeRecipe, out: Path, force: bool) -> dict:
    target = _Source(recipe.target())
    others = [_Source(p) for p in recipe.how.others(recipe)]
    layer_map = _plan_layers(recipe, target, others)
    # every shape checked before writing
    plan, vocab_mismatch = _plan_tensors(recipe, target, others, layer_map)
    with atomic_dir(out, force, recipe.inputs()) as tmp:
        files, per_layer = _write_tensors(recipe, target, others, plan, vocab_mismatch, tmp)
        config = dict(target.r.config)
        if recipe.dtype:
            config["dtype"] = recipe.dtype
        write_config(tmp, config)
        copy_aux_files(Path(target.path), tmp)
        inputs = {"target": target.path} | {f"input{k}": o.path for k, o in enumerate(others)}
        changes = [{"tensor": (f"layer {k}" if isinstance(k, int) else k),
                    "layer": k if isinstance(k, int) else None,
                    "rel_change": math.sqrt(v[0] / v[1]) if v[1] else 0.0,
                    "mapped_from": layer_map.get(k) if isinstance(k, int) else None}
                   for k, v in per_layer.items()]
        result = {"method": recipe.method, "tensors": len(plan), "files": [f.name for f in files],
                  "vocab_mismatch": vocab_mismatch, "layer_map": layer_map, "changes": changes}
        result["figures"] = merge_figures(recipe, result, target.layers)
        write_record(tmp, "merge", asdict(recipe), inputs=inputs, result=result, figures=result["figures"])
        write_merge_report(tmp, recipe, result)
    return result


def merge_figures(recipe: MergeRecipe, result: dict, layers: int) -> list[Figure]:
    changed = [c["rel_change"] for c in result["changes"] if c["layer"] is not None]
    return [setting("method", "method", recipe.method),
            analytic("tensors", "tensors", result["tensors"], "tensors"),
            analytic("layers", "layers", layers, "layers", key=True),
            analytic("untouched_layers", "layers left untouched (new in the target: no residual)",
                     sum(1 for v in result["layer_map"].values() if v is None), "layers", key=True),
            Figure("max_layer_change", "largest relative change of a layer against the target",
                   max(changed, default=0.0), "1", group="model", how="file", exact=True, key=True)]


def _plan_tensors(recipe: MergeRecipe, target: _Source, others: list[_Source],
                  layer_map: dict[int, int | None]) -> tuple[list[tuple[str, int | None, str | None]], bool]:
    """([(tensor, its layer or None, the tensor to read in the other models or None)], vocab sizes differ),
    refusing any shape mismatch before a byte is written."""
    vocab_mismatch = False
    plan = []
    for name in target.r.keys():
        i, rest = split_layer_name(name)
        j = layer_map[i] if i is not None else -1
        src = name if i is None else (None if j is None else f"model.layers.{j}.{rest}")
        for o in others if src is not None else []:
            a, b = target.shape(name), o.shape(src)
            if a == b:
                continue
            if not (name in VOCAB_TENSORS and a[1:] == b[1:]):
                raise SlmError(f"shape mismatch for {name}: {a} vs {b} in {o.path}: the models must share an "
                               "architecture")
            if recipe.embeddings == "refuse":
                raise SlmError(f"vocab sizes differ ({a[0]} in {target.path} vs {b[0]} in {o.path}): set "
                               "`embeddings: skip` to keep the target's embeddings or `embeddings: slice` "
                               "to merge the shared rows")
            vocab_mismatch = True
        plan.append((name, i, src))
    return plan, vocab_mismatch


def _write_tensors(recipe: MergeRecipe, target: _Source, others: list[_Source], plan: list,
                   vocab_mismatch: bool, tmp: Path) -> tuple[list[Path], dict]:
    """Stream the merged tensors into shards under `tmp`; returns (files, per layer or tensor group: [sum of
    squared change, sum of squared target])."""
    out_dtype = DTYPES[recipe.dtype] if recipe.dtype else None
    per_layer: dict = {}
    writer = ShardedWriter(tmp)
    for name, i, src in plan:
        orig = target.r.get(name)
        theta = orig.float()
        rows = None
        if src is not None and name in VOCAB_TENSORS and vocab_mismatch:
            if recipe.embeddings == "skip":
                src = None
            else:  # slice: merge the rows every model has, keep the target's others
                rows = min([theta.shape[0]] + [o.shape(src)[0] for o in others])
        if src is not None:
            ins = [o.get(src)[:rows] if rows else o.get(src) for o in others]
            head = theta[:rows] if rows else theta
            merged = recipe.how.combine(recipe, head, ins, t_for_layer(recipe.t, i, target.layers))
            theta = torch.cat([merged, theta[rows:]]) if rows else merged
        res = theta.to(out_dtype or orig.dtype)
        acc = per_layer.setdefault(i if i is not None else name, [0.0, 0.0])
        diff = res.float() - orig.float()
        acc[0] += dot64(diff, diff)
        acc[1] += dot64(orig, orig)
        del diff
        writer.add(name, res)
    return writer.close(), per_layer
