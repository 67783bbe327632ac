"""LLaMA Pro block expansion (Wu et al. 2024, arXiv:2401.02415).

The L blocks are split into N groups of M = L/N; above each group, copies of its top P blocks are
stacked with o_proj and down_proj zeroed, so every copy is an identity map on the residual stream and
the expanded model computes exactly the original function. LLaMA-2-7B: L=32, N=8, P=1 → 40 blocks.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from slm.errors import SlmError
from slm.gguf_mix import fallback_warning
from slm.guard import guard_output
from slm.io import check_weights
from slm.spec import load_spec
from slm.surgery.restack import restack


@dataclass
class ExpandArgs:
    groups: int  # N: number of groups the original blocks are split into (must divide the layer count)
    copies: int = 1  # P: top blocks of each group copied above it (1 ≤ P ≤ L/N)
    dtype: str | None = None  # output dtype (float32/float16/bfloat16); None keeps the source dtype
    parity: bool = True  # after writing, compare fp32 logits of original and expanded on fixed prompts
    force: bool = False  # replace an existing output directory

    def __post_init__(self):
        if self.groups < 1:
            raise SlmError(f"--groups must be ≥ 1 (got {self.groups})")
        if self.copies < 1:
            raise SlmError(f"--copies must be ≥ 1 (got {self.copies})")


def plan_expansion(n_layers: int, groups: int, copies: int) -> tuple[list[int], list[int]]:
    """(source layer of every output layer, output positions of the new identity copies)."""
    if n_layers % groups:
        divisors = [d for d in range(1, n_layers + 1) if n_layers % d == 0]
        raise SlmError(f"--groups {groups} does not divide the {n_layers} layers: use one of {divisors}")
    m = n_layers // groups
    if copies > m:
        raise SlmError(f"--copies {copies} exceeds the {m} blocks per group ({n_layers} layers / {groups} "
                       f"groups): use --copies ≤ {m}")
    src: list[int] = []
    new: list[int] = []
    for g in range(groups):
        block = list(range(g * m, (g + 1) * m))
        src += block
        for s in block[m - copies:]:
            new.append(len(src))
            src.append(s)
    return src, new


def _warn_quant_shape(model: Path, layers: int) -> None:
    """One line to stderr, before any work, when the expanded shape makes llama.cpp's K-quants fall back."""


    spec = dataclasses.replace(load_spec(model), layers=layers)
    warning = fallback_warning(spec, ["q6_k", "q4_k_m"])  # the K-quants an edge export usually asks for
    if warning:
        print(warning, file=sys.stderr)


def expand(model: Path | str, out: Path | str, args: ExpandArgs) -> dict:
    """Expand `model` into `out` (HF checkpoint + slm.json + report.html). Returns the result record."""
    model, out = Path(model), Path(out)
    n = load_spec(model).layers  # refuses non-Llama-family and incomplete configs in one line
    src, new = plan_expansion(n, args.groups, args.copies)  # validate before any work
    # output checks and lock first: a refused run prints only its error
    with guard_output(out, [model], args.force):
        check_weights(model)
        _warn_quant_shape(model, len(src))
        step = {"method": "llama_pro", **asdict(args)}
        return restack(model, out, src, new, step, kind="expand", zero_new=True, dtype=args.dtype,
                       force=args.force, parity=args.parity)
