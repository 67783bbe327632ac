"""A figure: one number (or short text) a run reports, carrying its own meaning.

Every verb's producer emits its results as `Figure`s — name, label, value, unit, interval, which way is
better, group, how it was obtained — and `slm.json` stores them as plain JSON objects with exactly these
fields (`result.figures`). Reports, compare, the index and plan read the fields; nothing decodes a key after
the fact, so a new figure is added in one place, where it is produced (as gguf-py's `TensorInfo` carries a
tensor's type and shape with it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from slm.errors import SlmError
from slm.stats import ci95, ci95_se

# in the order compare shows them; 'setting' rows say how a run was made and are never compared as figures
GROUPS = ("speed", "latency", "energy", "memory", "size", "quality", "forgetting", "training", "model",
          "setting")
# how a number was obtained: measured (here, on the device itself, or on it over SSH), projected by a model of
# the device, analytic (computed from the shape alone), read from the files written, or a setting of the run
HOWS = ("measured here", "measured on the device", "measured over SSH", "projected", "analytic", "file",
        "setting")
BETTER = ("higher", "lower", "none")
UNITLESS = "1"  # the unit of a pure number (a ratio, a perplexity): shown as nothing
TEXT = "text"  # the unit of a text value (a setting, a name)
HIDDEN_UNITS = (UNITLESS, TEXT)


@dataclass(frozen=True)
class Figure:
    """One reported figure. `name` is stable across runs of one kind (compare lines runs up by it)."""

    name: str  # stable id within a record, e.g. "llama.cpp.tg128@d0"
    label: str  # what a person reads, e.g. "decode at depth 0 (llama.cpp, 128 tokens)"
    value: float | int | str | bool | None  # the figure (None: not available, said so in `note`)
    unit: str  # tok/s, bytes, MiB, nats/token, bpw, tokens, s, share (0–1), "1" (a pure number), "text"
    better: str = "none"  # higher | lower | none
    group: str = "model"  # one of GROUPS
    how: str = "measured here"  # one of HOWS
    interval: float | None = None  # half-width of the 95 % interval (None: no interval)
    spread: float | None = None  # sample standard deviation of the repetitions (timed figures)
    n: int | None = None  # repetitions (or scored items) behind the value
    disturbed: bool = False  # measured while other processes used the CPU (slm.profiling.hostload)
    exact: bool = False  # deterministic: the same inputs give the same value, so any change is real
    expected_error: float | None = None  # projected figures: the calibration's held-out error (a share)
    # one of the run's key figures: the index shows it, a compare of same-kind runs charts it
    key: bool = False
    source: str = ""  # provenance in words: the backend, calibration, text or file it came from
    note: str = ""  # a caveat a reader needs beside the value

    def __post_init__(self):
        bad = [f"{k}={getattr(self, k)!r} (one of {', '.join(v)})" for k, v in
               (("better", BETTER), ("group", GROUPS), ("how", HOWS)) if getattr(self, k) not in v]
        if not self.name or not self.label or not self.unit:
            bad.append("name, label and unit must be non-empty")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            bad.append(f"value {self.value} is not finite (use None and say why in note)")
        if bad:
            raise SlmError(f"figure {self.name!r}: {'; '.join(bad)}")

    @property
    def setting(self) -> bool:
        return self.group == "setting"

    @property
    def numeric(self) -> bool:
        return isinstance(self.value, (int, float)) and not isinstance(self.value, bool)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Figure:
        if not isinstance(d, dict):
            raise SlmError(f"a figure must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:
            raise SlmError(f"figure {d.get('name')!r} lacks a field ({e})") from None


def setting(name: str, label: str, value, unit: str = TEXT) -> Figure:
    """How a run was made (threads, device, method): shown apart, never compared as a figure."""
    return Figure(name, label, value, unit, group="setting", how="setting", exact=True)


def analytic(name: str, label: str, value, unit: str, better: str = "none", group: str = "model",
             **kw) -> Figure:
    """Computed from the shape or the arguments alone: exact."""
    return Figure(name, label, value, unit, better, group, "analytic", exact=True, **kw)


def from_file(name: str, label: str, value, unit: str, better: str = "none", group: str = "size",
              **kw) -> Figure:
    """Read from the files a run wrote (sizes, counts): exact."""
    return Figure(name, label, value, unit, better, group, "file", exact=True, **kw)


def timed(name: str, label: str, mean: float, std: float | None, reps: int | None, unit: str = "tok/s",
          better: str = "higher", group: str = "speed", how: str = "measured here", disturbed: bool = False,
          **kw) -> Figure:
    """A timed figure: the mean of `reps` repetitions with its Student-t 95 % interval."""
    return Figure(name, label, mean, unit, better, group, how, interval=ci95(std, reps),
                  spread=std, n=reps, disturbed=bool(disturbed), **kw)


def scored(name: str, label: str, value: float, se: float | None, n: int | None, unit: str,
           better: str = "lower", group: str = "quality", how: str = "measured here", **kw) -> Figure:
    """A mean over scored items (token losses, prompts) with its normal 95 % interval
    from the standard error."""
    return Figure(name, label, value, unit, better, group, how, interval=ci95_se(se), n=n, **kw)


# ---- reading and writing the list --------------------------------------------------------------------------
def dump(figures: list[Figure]) -> list[dict]:
    """The JSON form of a run's figures (names must be unique: compare lines runs up by them)."""
    names = [f.name for f in figures]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SlmError(f"figure names must be unique within a run; repeated: {', '.join(dup)}")
    return [f.to_dict() for f in figures]


def load(items) -> list[Figure]:
    if not isinstance(items, list):
        raise SlmError(f"result.figures must be a list of figures, got {type(items).__name__}")
    return [Figure.from_dict(d) for d in items]


def by_name(figures: list[Figure]) -> dict[str, Figure]:
    return {f.name: f for f in figures}


def relabel(f: Figure, **changes) -> Figure:
    """A copy with some fields changed (e.g. a remote run's how)."""
    return replace(f, **changes)


# ---- how a person reads one --------------------------------------------------------------------------------
def fmt(v) -> str:
    """Numbers as a person reads them: 4 significant figures for floats, thousands separators for ints."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "–"
        if v == 0 or 1e-3 <= abs(v) < 1e6:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return "" if v is None else str(v)


def value_text(v, unit: str) -> str:
    """A value with its unit (bytes scaled to KiB/MiB/GiB, shares as percentages, pure numbers bare)."""
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return fmt(v)
    if unit == "bytes" and abs(v) >= 1024:
        for scale, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(v) >= scale:
                return f"{fmt(v / scale)} {name}"
    if unit == "share":
        return f"{v:.1%}"
    return f"{fmt(v)} {'' if unit in HIDDEN_UNITS else unit}".strip()


def text(f: Figure, marks: bool = True, unit: bool = True) -> str:
    """'value ± interval unit' with † when disturbed, '(±E % expected)' for a projection; `unit=False` for a
    table that has a unit column."""
    if f.interval is not None and f.numeric:
        if f.unit == "share":
            body = f"{f.value:.1%} ± {f.interval:.1%}"
        else:
            u = f" {f.unit}" if unit and f.unit not in HIDDEN_UNITS else ""
            body = f"{fmt(f.value)} ± {fmt(f.interval)}{u}"
    elif unit or f.unit in ("bytes", "share"):
        body = value_text(f.value, f.unit)
    else:
        body = fmt(f.value) if f.value is not None else "–"
    if f.expected_error is not None:
        body += f" (±{f.expected_error:.0%} expected)"
    if marks and f.disturbed:
        body += " †"
    return body
