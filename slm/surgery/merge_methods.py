"""The merge methods, one class each, and the one list that names them (as mergekit's merge_methods registry).

A method says which recipe fields it needs (and checks them), which model is the target (whose config, tensor
list and tokenizer the output takes), which other models it reads and in what order, whether the other models'
layers are found through the target's surgery record, and how one tensor is combined. merge.py streams the
tensors and knows nothing of any method; adding one (TIES, DARE, …) is one class here and one entry in
METHODS.

- linear: θ = Σ w_k θ_k (weights normalised to sum 1 unless `normalize: false`) — "model soups",
  Wortsman et al. 2022.
- slerp: spherical interpolation of two models per tensor, t scalar or a per-layer list interpolated over
  depth (the "gradient" form of mergekit's slerp); falls back to linear when the tensors are nearly colinear.
- task_arithmetic: θ = θ_base + Σ λ_k (θ_k − θ_base) — Ilharco et al. 2023, "Editing Models with Task
  Arithmetic".
- instruction_residual: θ = θ_cpt + α (θ_instruct − θ_base) — Jindal et al. 2024 (Samsung Research),
  "Balancing Continuous Pre-Training and Instruction Fine-Tuning". θ_cpt may be an *expanded* model: the
  residual of base layer j goes to every non-new layer whose recorded source is j; new layers get none.
  No existing merge tool maps a residual through a block-expansion record.
"""

from __future__ import annotations

from typing import Protocol

import torch

from slm.errors import SlmError
from slm.surgery.merge_ops import slerp


class MergeMethod(Protocol):
    name: str  # the recipe's `method:`
    params: tuple[str, ...]  # the recipe fields it reads (besides dtype and embeddings)
    through_record: bool  # the other models' layers are found through the target's surgery record

    def check(self, r) -> None:
        """Raise one line naming what the recipe lacks."""

    def target(self, r) -> str:
        """The model whose config, tensor list and tokenizer the output takes."""

    def others(self, r) -> list[str]:
        """The other models read, in the order `combine` receives their tensors."""

    def combine(self, r, target: torch.Tensor, ins: list[torch.Tensor], t: float) -> torch.Tensor:
        """One merged tensor (float32); `t` is slerp's value for this tensor's layer."""


class Linear:
    name, params, through_record = "linear", ("models", "normalize"), False

    def check(self, r) -> None:
        if not r.models:
            raise SlmError("linear needs `models:` (one or more, with weights)")
        if r.normalize and sum(m["weight"] for m in r.models) == 0:
            raise SlmError("linear weights sum to 0: give non-zero weights or set normalize: false")

    def target(self, r) -> str:
        return r.models[0]["model"]

    def others(self, r) -> list[str]:
        return [m["model"] for m in r.models[1:]]

    def combine(self, r, target, ins, t):
        weights = [m["weight"] for m in r.models]
        acc = weights[0] * target
        for w, x in zip(weights[1:], ins):
            acc = acc + w * x
        return acc / (sum(weights) if r.normalize else 1.0)


class Slerp:
    name, params, through_record = "slerp", ("models", "t", "slerp_eps"), False

    def check(self, r) -> None:
        if len(r.models) != 2:
            raise SlmError("slerp needs exactly two `models:`")

    def target(self, r) -> str:
        return r.models[0]["model"]

    def others(self, r) -> list[str]:
        return [r.models[1]["model"]]

    def combine(self, r, target, ins, t):
        return slerp(t, target, ins[0], r.slerp_eps)


class TaskArithmetic:
    name, params, through_record = "task_arithmetic", ("base", "models"), False

    def check(self, r) -> None:
        if not (r.models and r.base):
            raise SlmError("task_arithmetic needs `base:` and `models:`")

    def target(self, r) -> str:
        return r.models[0]["model"]

    def others(self, r) -> list[str]:
        return [r.base] + [m["model"] for m in r.models]

    def combine(self, r, target, ins, t):
        base, models = ins[0], ins[1:]
        acc = base.clone()
        for m, x in zip(r.models, models):
            acc = acc + m["weight"] * (x - base)
        return acc


class InstructionResidual:
    name, params, through_record = "instruction_residual", ("cpt", "base", "instruct", "alpha"), True

    def check(self, r) -> None:
        if not (r.cpt and r.base and r.instruct):
            raise SlmError("instruction_residual needs `cpt:`, `base:` and `instruct:`")

    def target(self, r) -> str:
        return r.cpt

    def others(self, r) -> list[str]:
        return [r.base, r.instruct]

    def combine(self, r, target, ins, t):
        base, instruct = ins
        return target + r.alpha * (instruct - base)


METHODS: dict[str,
              MergeMethod] = {m.name: m for m in (Linear(), Slerp(), TaskArithmetic(), InstructionResidual())}


def get_method(name) -> MergeMethod:
    if not isinstance(name, str) or name not in METHODS:
        raise SlmError(f"unknown merge method {name!r}: use one of {', '.join(METHODS)}")
    return METHODS[name]
