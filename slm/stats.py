"""The lab's one set of statistical rules: 95 % intervals, the uncertainty of a change, and when a change is
told apart from noise. Every producer, report and verdict uses these, so "significant" means one thing.

- A mean of R repeated measurements: mean ± t(0.975, R−1)·s/√R (Student 1908).
- A mean over many scored tokens: mean ± z·s.e. with z = 1.96 (normal approximation; tokens taken as
  independent, a lower bound on the true uncertainty).
- A relative change b/a − 1 of two independent estimates: combined relative uncertainty √(ra² + rb²)·|b/a|
  (first-order error propagation for a ratio, Taylor, *An Introduction to Error Analysis*, §3.8).
- A paired difference (two models scored on the same tokens, or the same prompts): the mean of the per-item
  differences ± z·s.e. of those differences.
- Significant: the 95 % intervals do not overlap, or the change's own interval excludes zero — and the change
  exceeds a floor for figures that drift between runs (timed figures; see slm.report.lineup.TIMED_FLOOR).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Protocol

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (any printed t table)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
Z95 = 1.959964  # two-sided 95 % quantile of the standard normal


def t975(df: int) -> float:
    """t quantile for a two-sided 95 % interval; beyond the table the Cornish–Fisher expansion in 1/df
    (Abramowitz & Stegun 26.7.5), which gives 2.0423 at df = 30 against the table's 2.042."""
    if df < 1:
        raise ValueError("a t interval needs at least 2 samples")
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def ci95(std: float | None, n: int | None) -> float | None:
    """Half-width of the 95 % interval of a mean of n samples with sample std `std` (None: no interval)."""
    if std is None or not n or n < 2:
        return None
    return t975(n - 1) * std / math.sqrt(n)


def ci95_of(samples: list[float]) -> float | None:
    """Half-width of the 95 % interval of the mean of `samples` (None for fewer than two)."""
    return ci95(statistics.stdev(samples), len(samples)) if len(samples) > 1 else None


def ci95_se(se: float | None) -> float | None:
    """Half-width of the 95 % interval of a mean over many items with standard error `se` (normal)."""
    return None if se is None or not math.isfinite(se) else Z95 * se


def significant(delta: float, half_width: float | None) -> bool:
    """A difference whose own 95 % interval (± half_width) excludes zero."""
    return half_width is not None and abs(delta) > half_width


def seed_interval(means: list[float], token_ses: list[float]) -> tuple[float, float | None]:
    """(mean over K seeds, 95 % half-width) of a figure measured once per seed, each with its own s.e. over
    tokens.

    The variance of the mean over seeds is estimated by the seed-to-seed spread s²/K (which already contains
    each run's token noise); with K = 1 only the token s.e. is left. The half-width uses t over K − 1 degrees
    of freedom and never falls below the token-level interval of the mean: max(t·s/√K, z·√(Σ se²)/K)."""
    k = len(means)
    if k == 0:
        raise ValueError("no seeds")
    m = statistics.fmean(means)
    token = Z95 * math.sqrt(sum(s * s for s in token_ses)) / k if token_ses else None
    if k == 1:
        return m, token
    spread = t975(k - 1) * statistics.stdev(means) / math.sqrt(k)
    return m, max(spread, token or 0.0)


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (Wilson 1927; better than the normal one near 0 and 1);
    (0, 1) when n = 0, and the ends exact (0 or 1) when every trial failed or succeeded."""
    if n <= 0:
        return 0.0, 1.0
    z = Z95
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def mcnemar(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes: `lost` items went 1→0, `gained` went 0→1
    (McNemar 1947; the exact binomial form, valid for small counts)."""
    n = lost + gained
    if n == 0:
        return 1.0
    k = min(lost, gained)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


class Measured(Protocol):
    """What the change rule reads of a figure (slm.figure.Figure has these)."""

    value: object
    interval: float | None
    exact: bool
    disturbed: bool


@dataclass(frozen=True)
class Change:
    """b relative to a, with its uncertainty and whether it is told apart from noise."""

    rel: float | None  # (b − a) / |a|; None when a is 0 or missing
    ci: float | None  # half-width of the 95 % interval of `rel` (0 for exact figures, None when unknown)
    verdict: str  # 'same' | 'significant' | 'within noise' | 'no interval' | 'disturbed' | 'differs'


def _rel_halfwidth(f: Measured) -> float | None:
    if f.exact:
        return 0.0
    return None if f.interval is None or not f.value else abs(f.interval / f.value)


def change(a: Measured, b: Measured, floor: float = 0.0) -> Change:
    """The relative change from a to b. Significant when the two 95 % intervals do not overlap or the change's
    interval excludes 0, and the change exceeds `floor` (between-run drift that within-run intervals miss)."""
    va, vb = a.value, b.value
    if not va:
        return Change(None, None, "same" if va == vb else "no interval")
    rel = (vb - va) / abs(va)
    if va == vb:  # e.g. a run compared with itself: nothing changed, whatever the noise
        return Change(0.0, 0.0, "same")
    if a.exact and b.exact:
        return Change(rel, 0.0, "significant")
    if a.disturbed or b.disturbed:
        return Change(rel, None, "disturbed")
    ra, rb = _rel_halfwidth(a), _rel_halfwidth(b)
    if ra is None or rb is None:
        return Change(rel, None, "no interval")
    ci = abs(vb / va) * math.hypot(ra, rb)
    ia, ib = a.interval or 0.0, b.interval or 0.0
    apart = va + ia < vb - ib or vb + ib < va - ia
    sig = (apart or abs(rel) > ci) and abs(rel) > floor
    return Change(rel, ci, "significant" if sig else "within noise")
