"""SOLAR depth up-scaling (Kim et al. 2023, arXiv:2312.15166).

Two copies of the n-layer model are stacked after dropping the last m layers of the first and the first
m of the second: 2(n−m) layers (SOLAR 10.7B: n=32, m=8 → 48). Unlike block expansion this does not
preserve the function; continued pretraining recovers it. `--slices "0:24,8:32"` states the stack directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from slm.errors import SlmError
from slm.spec import load_spec
from slm.surgery.restack import restack


@dataclass
class UpscaleArgs:
    drop: int | None = None  # m: layers dropped at the seam of each copy → 2(n−m) layers
    slices: str | None = None  # explicit stack, e.g. "0:24,8:32" (half-open ranges of source layers)
    dtype: str | None = None  # output dtype; None keeps the source dtype
    force: bool = False  # replace an existing output directory

    def __post_init__(self):
        if (self.drop is None) == (self.slices is None):
            raise SlmError("give exactly one of --drop M or --slices A:B,C:D")
        if self.drop is not None and self.drop < 0:
            raise SlmError(f"--drop must be ≥ 0 (got {self.drop})")


def plan_upscale(n_layers: int, args: UpscaleArgs) -> list[int]:
    if args.drop is not None:
        m = args.drop
        if m >= n_layers:
            raise SlmError(f"--drop {m} must be smaller than the {n_layers} layers")
        return list(range(0, n_layers - m)) + list(range(m, n_layers))
    src: list[int] = []
    for part in args.slices.split(","):
        try:
            a, b = (int(x) for x in part.split(":"))
        except ValueError:
            raise SlmError(f"bad slice {part!r} in --slices: write START:END, e.g. 0:24,8:32") from None
        if not 0 <= a < b <= n_layers:
            raise SlmError(f"slice {a}:{b} is outside the model's layers 0:{n_layers}")
        src += range(a, b)
    return src


def upscale(model: Path | str, out: Path | str, args: UpscaleArgs) -> dict:
    model, out = Path(model), Path(out)
    n = load_spec(model).layers  # refuses non-Llama-family and incomplete configs in one line
    src = plan_upscale(n, args)
    seen: set[int] = set()
    new = []  # a layer is "new" at its second appearance: the duplicate CPT has to re-fit
    for j, s in enumerate(src):
        if s in seen:
            new.append(j)
        seen.add(s)
    step = {"method": "dus", **asdict(args)}
    # DUS copies layers verbatim: nothing is zeroed.
    return restack(model, out, src, new, step, kind="upscale", zero_new=False, dtype=args.dtype,
                   force=args.force)
