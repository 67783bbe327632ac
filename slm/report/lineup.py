"""The figures of several runs lined up for compare: each as value ± 95 % interval, the change against run A
with its uncertainty, a verdict (significant / within noise / no interval / disturbed), grouped by the
figures' own groups, and the few sentences at the top of the page computed from the same rows.

Runs line up by figure name; every label, unit and direction comes from the figures themselves (run A's where
runs disagree), and the verdict from the one rule in slm.stats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from slm.figure import GROUPS, Figure, fmt, text, value_text
from slm.stats import Change, change

# Smallest change of a timed figure called significant, whatever its intervals: within-run intervals miss what
# drifts between runs (CPU frequency, cache state, a neighbour between the runs). Measured on this 2-core
# host: two quiet back-to-back `--quick` profiles of one q8_0 GGUF (0 % other-process CPU) differed by 6.2 %
# at tg32@d256 while each run's own 95 % interval was ±3 %; run-to-run spread on a shared host is 10–20 %.
# Exact figures (sizes, scores) have no floor.
TIMED_FLOOR = 0.10
MARK_DISTURBED = "†"  # shown after a value measured while other processes used the CPU
LEGEND = (f"{MARK_DISTURBED} measured while other processes used the CPU (not judged); ± = 95 % interval; "
          "'no interval': the run recorded no repetitions for it; '± N % expected': a projection's held-out "
          "error; exact figures (sizes, counts, "
          f"deterministic scores) need none. Timed changes under {TIMED_FLOOR:.0%} are called within noise.")


def cell(f: Figure | None):
    """A table cell: the bare number where it sorts best (exact figures in plain units), else the figure's
    text with its interval and marks."""
    if f is None:
        return "–"
    if f.exact and f.numeric and f.unit not in ("bytes", "share") and not f.disturbed and f.interval is None:
        return f.value
    if f.numeric and not f.exact and f.interval is None and f.expected_error is None:
        return f"{fmt(f.value)} (no interval)" + (f" {MARK_DISTURBED}" if f.disturbed else "")
    return text(f, unit=False)


def change_text(c: Change | None) -> str:
    if c is None or c.rel is None:
        return "–"
    return f"{c.rel:+.1%}" + (f" ± {c.ci:.1%}" if c.ci else "")


@dataclass
class Line:
    """One figure across the runs."""

    name: str  # the figure's name
    label: str  # its label (run A's, or the first run that has it)
    unit: str
    group: str  # 'setting' rows are shown apart
    how: str
    figures: list  # Figure or None, one per run
    changes: list  # Change (or None) of each later run against A
    differs: bool  # the values are not all equal

    @property
    def cells(self) -> list:
        return [cell(f) if not self.group == "setting" else ("–" if f is None else f.value)
                for f in self.figures]

    @property
    def significant(self) -> bool:
        return any(c is not None and c.verdict == "significant" for c in self.changes)

    def row(self) -> list:
        verdicts = ", ".join("–" if c is None else c.verdict for c in self.changes)
        unit = "" if self.unit in ("1", "text") else self.unit
        return [self.label, unit, *self.cells, ", ".join(change_text(c) for c in self.changes), verdicts]


def _changes(figs: list[Figure | None]) -> list[Change | None]:
    a = figs[0]
    out = []
    for b in figs[1:]:
        if a is None or b is None or a.setting:
            out.append(None)
        elif a.numeric and b.numeric:
            out.append(change(a, b, 0.0 if (a.exact and b.exact) else TIMED_FLOOR))
        else:  # text figures: same or not
            out.append(Change(None, None, "same" if a.value == b.value else "differs"))
    return out


def lineup(runs: list[list[Figure]]) -> list[Line]:
    """Every figure of every run, in first-seen order."""
    by = [{f.name: f for f in r} for r in runs]
    names = list(dict.fromkeys(f.name for r in runs for f in r))
    lines = []
    for n in names:
        figs = [b.get(n) for b in by]
        first = next(f for f in figs if f is not None)
        differs = len({json.dumps(None if f is None else f.value, default=str) for f in figs}) > 1
        lines.append(Line(n, first.label, first.unit, first.group, first.how, figs, _changes(figs), differs))
    return lines


def by_group(lines: list[Line]) -> dict[str, list[Line]]:
    out = {g: [ln for ln in lines if ln.group == g] for g in GROUPS}
    return {g: v for g, v in out.items() if v}


def shared(lines: list[Line]) -> list[Line]:
    """Figures (not settings) that run A and at least one later run both have: what can be compared at all."""
    return [ln for ln in lines if ln.group != "setting" and ln.figures[0] is not None
            and any(f is not None for f in ln.figures[1:])]


def _short(ln: Line, c: Change) -> str:
    return f"{ln.label} {change_text(c)}"


def _more(items: list[str], most: int, sep: str = ", ") -> str:
    return sep.join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def sentences(lines: list[Line], labels: list[str], most: int = 4) -> list[str]:
    """What changed and what did not, per later run against A — e.g. 'B vs A: decode … −11.0% ± 4.0%; within
    noise: prefill …'. A run compared with itself says 'no significant difference'; runs that share no figure
    say so instead of claiming no difference."""
    out = []
    figs = [ln for ln in lines if ln.group != "setting"]
    for j, lab in enumerate(labels[1:]):
        both = [ln for ln in figs if ln.figures[0] is not None and ln.figures[j + 1] is not None]
        head = f"{lab} vs {labels[0]}: "
        if not both:
            out.append(head + "they share no figure to compare (different kinds of run); their figures are "
                       "listed side by side below.")
            continue
        sig = [(ln, ln.changes[j]) for ln in both if ln.changes[j] and ln.changes[j].verdict == "significant"]
        noise = [ln.label for ln in both if ln.changes[j] and ln.changes[j].verdict == "within noise"]
        busy = [ln.label for ln in both if ln.changes[j] and ln.changes[j].verdict == "disturbed"]
        if sig:
            head += _more([_short(ln, c) for ln, c in sig], most, "; ")
        else:
            head += "no significant difference"
        if noise:
            head += f"; within noise: {_more(noise, most)}"
        if busy:
            head += f"; not judged (measured under interference): {_more(busy, most)}"
        out.append(head + ".")
    return out


def key_text(f: Figure) -> str:
    """'label: value ± interval unit' as the index shows a key figure."""
    return f"{f.label}: {text(f) if f.numeric else value_text(f.value, f.unit)}"
