"""The figures of several runs lined up for compare: each as mean ± 95 % interval, the change against run A with its
uncertainty, a verdict (significant / within noise / no interval / disturbed), grouped by the registry's groups, and
the few sentences at the top of the page computed from the same rows."""

from __future__ import annotations

import json
from dataclasses import dataclass

from slm.report.figures import GROUPS, is_companion, lookup, value_text
from slm.report.render import fmt
from slm.report.uncertainty import Change, Estimate, change, ci95

# Smallest change of a timed figure called significant, whatever its intervals: within-run intervals miss what
# drifts between runs (CPU frequency, cache state, a neighbour between the runs). Measured on this 2-core host: two
# quiet back-to-back `--quick` profiles of one q8_0 GGUF (0 % other-process CPU) differed by 6.2 % at tg32@d256
# while each run's own 95 % interval was ±3 %; the brief puts run-to-run spread here at 10–20 %. Exact figures
# (sizes, scores) have no floor.
TIMED_FLOOR = 0.10
MARK_DISTURBED = "†"  # shown after a value measured while other processes used the CPU
LEGEND = (f"{MARK_DISTURBED} measured while other processes used the CPU (not judged); ± = 95 % interval (Student t "
          "over the repetitions); 'no interval': the run recorded no repetitions for it; exact figures (sizes, counts, "
          f"scores) need none. Timed changes under {TIMED_FLOOR:.0%} are called within noise.")


def estimate(summary: dict, key: str) -> Estimate | None:
    """A run's figure with its interval from the `.std` and `.n` companions (schema ≥ 2), or None if not numeric."""
    v = summary.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    r = lookup(key)
    return Estimate(float(v), ci95(summary.get(key + ".std"), summary.get(key + ".n")), r.exact,
                    bool(summary.get(key + ".disturbed")))


def cell(e: Estimate | None, raw, unit: str):
    """A table cell: the number alone (sortable) where there is no interval to show, else 'mean ± ci'."""
    if e is None:
        return "–" if raw is None else value_text(raw, unit)
    mark = f" {MARK_DISTURBED}" if e.disturbed else ""
    if e.exact:  # the bare number (sortable) unless the unit reads better scaled (bytes → MiB, shares → %)
        return f"{value_text(raw, unit)}{mark}" if unit in ("bytes", "share") or mark else raw
    if e.ci is None:
        return f"{fmt(raw)} (no interval){mark}"
    return f"{fmt(e.mean)} ± {fmt(e.ci)}{mark}"


def change_text(c: Change | None) -> str:
    if c is None or c.rel is None:
        return "–"
    return f"{c.rel:+.1%}" + (f" ± {c.ci:.1%}" if c.ci else "")


@dataclass
class Line:
    """One figure across the runs."""

    key: str  # raw summary key
    label: str  # registry label
    unit: str  # registry unit
    group: str  # registry group ('setting' rows are shown apart)
    cells: list  # one per run
    changes: list  # Change (or None) of each later run against A
    differs: bool  # the raw values are not all equal

    @property
    def significant(self) -> bool:
        return any(c is not None and c.verdict == "significant" for c in self.changes)

    def row(self) -> list:
        verdicts = ", ".join("–" if c is None else c.verdict for c in self.changes)
        return [self.label, self.unit, *self.cells, ", ".join(change_text(c) for c in self.changes), verdicts]


def lineup(summaries: list[dict]) -> list[Line]:
    """Every figure of every run (companions folded in), in first-seen order."""
    keys = [k for k in dict.fromkeys(k for s in summaries for k in s) if not is_companion(k)]
    lines = []
    for k in keys:
        r = lookup(k)
        raws = [s.get(k) for s in summaries]
        ests = [estimate(s, k) for s in summaries]
        floor = 0.0 if r.exact else TIMED_FLOOR
        changes = [None if (ests[0] is None or e is None or r.setting) else change(ests[0], e, floor) for e in ests[1:]]
        if not r.setting and ests[0] is None:  # text figures: same or not
            changes = [None if v is None else Change(None, None, "same" if v == raws[0] else "differs") for v in raws[1:]]
        differs = len({json.dumps(v, sort_keys=True, default=str) for v in raws}) > 1
        cells = [("–" if v is None else v) if r.setting else cell(e, v, r.unit) for e, v in zip(ests, raws)]
        lines.append(Line(k, r.label, r.unit, r.group, cells, changes, differs))
    return lines


def by_group(lines: list[Line]) -> dict[str, list[Line]]:
    out = {g: [ln for ln in lines if ln.group == g] for g in GROUPS}
    return {g: v for g, v in out.items() if v}


def _short(ln: Line, c: Change) -> str:
    return f"{ln.label} {change_text(c)}"


def sentences(lines: list[Line], labels: list[str], most: int = 4) -> list[str]:
    """What changed and what did not, per later run against A — e.g. 'B vs A: decode … −11.0% ± 4.0%; within
    noise: prefill …'. A run compared with itself says 'no significant difference'."""
    out = []
    figs = [ln for ln in lines if ln.group != "setting"]
    for j, lab in enumerate(labels[1:]):
        sig = [(ln, ln.changes[j]) for ln in figs if ln.changes[j] is not None and ln.changes[j].verdict == "significant"]
        noise = [ln for ln in figs if ln.changes[j] is not None and ln.changes[j].verdict == "within noise"]
        busy = [ln for ln in figs if ln.changes[j] is not None and ln.changes[j].verdict == "disturbed"]
        head = f"{lab} vs {labels[0]}: "
        if sig:
            more = f" and {len(sig) - most} more" if len(sig) > most else ""
            head += "; ".join(_short(ln, c) for ln, c in sig[:most]) + more
        else:
            head += "no significant difference"
        if noise:
            head += f"; within noise: {', '.join(ln.label for ln in noise[:most])}" + (
                f" and {len(noise) - most} more" if len(noise) > most else "")
        if busy:
            head += f"; not judged (measured under interference): {', '.join(ln.label for ln in busy[:most])}" + (
                f" and {len(busy) - most} more" if len(busy) > most else "")
        out.append(head + ".")
    return out
