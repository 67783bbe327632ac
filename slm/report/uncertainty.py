"""Uncertainty of measured figures: Student-t 95 % intervals and the uncertainty of a relative change.

A figure measured R times is reported as mean ± t(0.975, R−1)·s/√R (Student 1908; the interval every statistics
text gives for a mean with unknown variance). A relative change b/a − 1 carries the combined relative uncertainty
√(ra² + rb²)·|b/a| (first-order error propagation for a ratio of independent estimates, e.g. Taylor, *An
Introduction to Error Analysis*, §3.8). Both are used by the profiler (when to stop repeating) and by compare
(significant or within noise).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (any printed t table)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.959964


def t975(df: int) -> float:
    """t quantile for a two-sided 95 % interval; beyond the table the Cornish–Fisher expansion in 1/df
    (Abramowitz & Stegun 26.7.5), which gives 2.0423 at df = 30 against the table's 2.042."""
    if df < 1:
        raise ValueError("a t interval needs at least 2 samples")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def ci95(std: float | None, n: int | None) -> float | None:
    """Half-width of the 95 % interval of a mean of n samples with sample std `std` (None: no interval)."""
    if std is None or not n or n < 2:
        return None
    return t975(n - 1) * std / math.sqrt(n)


def ci95_of(samples: list[float]) -> float | None:
    """Half-width of the 95 % interval of the mean of `samples` (None for fewer than two)."""
    return ci95(statistics.stdev(samples), len(samples)) if len(samples) > 1 else None


@dataclass(frozen=True)
class Estimate:
    """One figure of one run: its mean and, where it was repeated, its 95 % interval."""

    mean: float  # the reported value
    ci: float | None = None  # half-width of the 95 % interval (None: no interval recorded)
    exact: bool = False  # computed, not timed (sizes, counts, analytic or deterministic scores): no noise
    disturbed: bool = False  # measured while other processes used the CPU (see slm.profiling.hostload)

    @property
    def rel(self) -> float | None:
        """Half-width relative to the mean."""
        if self.exact:
            return 0.0
        return None if self.ci is None or not self.mean else abs(self.ci / self.mean)


@dataclass(frozen=True)
class Change:
    """b relative to a, with its uncertainty and whether it is told apart from noise."""

    rel: float | None  # (b − a) / |a|; None when a is 0 or missing
    ci: float | None  # half-width of the 95 % interval of `rel` (0 for exact figures, None when unknown)
    verdict: str  # 'same' | 'significant' | 'within noise' | 'no interval' | 'disturbed'


def change(a: Estimate, b: Estimate, floor: float = 0.0) -> Change:
    """The relative change from a to b. Significant when the two intervals do not overlap or the change's interval
    excludes 0, and the change exceeds `floor` (between-run drift that within-run intervals do not capture)."""
    if not a.mean:
        return Change(None, None, "same" if a.mean == b.mean else "no interval")
    rel = (b.mean - a.mean) / abs(a.mean)
    if a.mean == b.mean:  # e.g. a run compared with itself: nothing changed, whatever the noise
        return Change(0.0, 0.0, "same")
    if a.exact and b.exact:
        return Change(rel, 0.0, "significant")
    if a.disturbed or b.disturbed:
        return Change(rel, None, "disturbed")
    if a.rel is None or b.rel is None:
        return Change(rel, None, "no interval")
    ci = abs(b.mean / a.mean) * math.hypot(a.rel, b.rel)
    apart = (a.mean + (a.ci or 0) < b.mean - (b.ci or 0)) or (b.mean + (b.ci or 0) < a.mean - (a.ci or 0))
    sig = (apart or abs(rel) > ci) and abs(rel) > floor
    return Change(rel, ci, "significant" if sig else "within noise")
