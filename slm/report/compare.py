"""`slm report compare A B ...` and the reports index: several runs side by side, differences highlighted.

Works across kinds (profile, export, train, expand, merge…) because every step's slm.json carries its typed
figures (`result.figures`); runs line up by figure name, the labels, units, intervals and directions come from
the figures, and a folder that is a model adds its shape's figures (ModelSpec.figures).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from slm.errors import SlmError
from slm.figure import Figure, setting
from slm.guard import atomic_dir
from slm.record import figures_of, read_record, write_record
from slm.report.lineup import LEGEND, MARK_DISTURBED, by_group, key_text, lineup, sentences, shared
from slm.report.render import Chart, Table, new_figure, render_report, svg_of
from slm.spec import load_spec

MAX_BARS = 24  # bars in a compare chart
INDEX_FIGURES = 5  # key figures per run on the index: what a reader takes in at a glance
GROUP_TITLES = {"speed": "Speed", "latency": "Latency", "energy": "Energy", "memory": "Memory",
                "size": "Size",
                "quality": "Quality", "forgetting": "Forgetting", "training": "Training",
                "model": "Model shape"}


def load_run(path: Path | str) -> dict:
    """The slm.json of a run folder (or of the folder a report.html / index.html lives in), its figures typed
    under "_figures"."""
    p = Path(path)
    if p.is_file() and p.suffix == ".html":
        p = p.parent
    rec = read_record(p)
    if rec is None:
        raise SlmError(f"{path} has no slm.json: pass an output folder written by an slm verb")
    rec["_path"] = str(p)
    rec["_figures"] = figures_of(rec)
    return rec


def _model_figures(folder: Path) -> list[Figure]:
    """For a run folder that is a model (import, expand, upscale, merge, train's final): its shape's figures,
    so that e.g. before/after expansion line up on parameters, layers and KV-cache bytes."""
    cfg = folder / "config.json" if (folder / "config.json").is_file() else folder / "final" / "config.json"
    if not cfg.is_file():
        return []
    try:
        return load_spec(cfg.parent).figures()
    except SlmError:  # not a Llama-family config: nothing to add
        return []


def _label(rec: dict, i: int) -> str:
    return f"{chr(65 + i) if i < 26 else i}: {Path(rec['_path']).name} ({rec['kind']})"


def key_figures(figures: list[Figure], most: int = INDEX_FIGURES) -> list[Figure]:
    """The run's key figures (those its producer marked), else its first figures that are not settings."""
    figs = [f for f in figures if not f.setting and (not isinstance(f.value, str) or len(f.value) < 40)]
    return ([f for f in figs if f.key] or figs)[:most]


def how_obtained(figures: list[Figure]) -> str:
    """How a run's figures were obtained, in words: their `how`s, with a projection's expected error."""
    hows = list(dict.fromkeys(f.how for f in figures if not f.setting))
    errs = [f.expected_error for f in figures if f.expected_error is not None]
    out = []
    for h in hows:
        if h == "projected" and errs:
            h += f" (within ±{max(errs):.0%} on published points held out of its calibration)"
        out.append(h)
    return "; ".join(out)


def compare(runs: list[Path | str], out_html: Path | str) -> Path:
    """Write one self-contained page comparing the runs and return its path: a few sentences computed from the
    table, the figures grouped (speed, memory, size, quality, training, model) as value ± 95 % interval with
    the change against A and its uncertainty, the settings apart, and the arguments."""
    return _compare(runs, out_html)[0]


def _compare(runs: list[Path | str], out_html: Path | str) -> tuple[Path, list[str], list[str]]:
    """compare(), also returning its lead sentences and the runs' kinds (the index's decisions)."""
    if len(runs) < 2:
        raise SlmError("compare needs at least two runs: slm report compare A B [C ...]")
    recs = [load_run(r) for r in runs]
    labels = [_label(r, i) for i, r in enumerate(recs)]
    short = [lab.split(" (")[0] for lab in labels]
    figs = [r["_figures"] + [f for f in _model_figures(Path(r["_path"]))
                             if f.name not in {g.name for g in r["_figures"]}] for r in recs]
    lines = lineup(figs)
    tables = []
    for group, rows in by_group(lines).items():
        if group == "setting":
            continue
        tables.append(Table(GROUP_TITLES[group], ["figure", "unit"] + short + ["change vs A", "verdict"],
                            [ln.row() for ln in rows],
                            highlight=[i for i, ln in enumerate(rows) if ln.significant],
                            note=LEGEND))
    settings = [ln for ln in lines if ln.group == "setting"]
    if settings:
        tables.append(Table("Settings (how the runs were made; not compared as figures)", ["setting"] + short,
                            [[ln.label] + ln.cells for ln in settings],
                            highlight=[i for i, ln in enumerate(settings) if ln.differs]))
    arows, ahl = _rows([_flat(r.get("args", {})) for r in recs])
    tables.append(Table("Arguments", ["argument"] + short + ["change vs A"], arows, highlight=ahl))
    kinds = {r["kind"] for r in recs}
    head = [setting(f"run.{lab[0]}", lab, f"{r['kind']}, created {r.get('created', '?')}, {r['_path']}")
            for lab, r in zip(labels, recs)]
    out_html = Path(out_html)
    links = [(lab, _rel_link(out_html, Path(r["_path"]))) for lab, r in zip(labels, recs)]
    lead = sentences(lines, short)
    page = render_report(out_html, "Compare: " + " vs ".join(Path(r["_path"]).name for r in recs), "compare",
                         head, _relative_chart(labels, lines, len(kinds) == 1), tables, links=links,
                         lead=lead)
    return page, lead, [r["kind"] for r in recs]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _rows(dicts: list[dict]) -> tuple[list[list], list[int]]:
    """(one row per key: key, each run's value, the change against A; indices of rows whose values differ)."""
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    rows, hl = [], []
    for k in keys:
        vals = [d.get(k) for d in dicts]
        row = [k] + vals
        base = vals[0]
        if _num(base) and base:
            rel = [(v - base) / abs(base) if _num(v) else None for v in vals[1:]]
            row.append(", ".join("–" if r is None else f"{r:+.1%}" for r in rel))
        else:
            row.append("")
        if len({json.dumps(v, sort_keys=True, default=str) for v in vals}) > 1:
            hl.append(len(rows))
        rows.append(row)
    return rows, hl


def _relative_chart(labels: list[str], lines: list, same_kind: bool) -> list[Chart]:
    """Bars of each run's figures relative to run A, with 95 % intervals where recorded (none when no figure
    differs); for runs of one kind, only the key figures (the tables keep everything)."""
    keep = [ln for ln in shared(lines) if ln.differs and ln.figures[0].numeric and ln.figures[0].value]
    if same_kind and any(ln.figures[0].key for ln in keep):
        keep = [ln for ln in keep if ln.figures[0].key]
    keep = keep[:MAX_BARS]
    if not keep:
        return []
    fig, ax = new_figure(8, 0.45 * len(keep) + 1.5)
    width = 0.8 / len(labels)
    for j, lab in enumerate(labels):
        fs = [ln.figures[j] for ln in keep]
        base = [abs(ln.figures[0].value) for ln in keep]
        vals = [f.value / ln.figures[0].value if f is not None and f.numeric else float("nan")
                for f, ln in zip(fs, keep)]
        errs = [(f.interval or 0) / b if f is not None else 0 for f, b in zip(fs, base)]
        ax.barh([i + j * width for i in range(len(keep))], vals, height=width, label=lab, xerr=errs,
                capsize=2)
    ax.set_yticks([i + 0.4 - width / 2 for i in range(len(keep))], [ln.label for ln in keep])
    ax.invert_yaxis()  # first figure on top, as in the table
    ax.axvline(1.0, color="#888", lw=0.8)
    ax.set_xlabel("value relative to run A (A = 1; each figure in its own unit); whiskers: 95 % interval")
    ax.set_title("Figures that differ, relative to run A")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    hows = sorted({ln.how for ln in keep})
    return [Chart("Figures that differ, relative to A", svg_of(fig),
                  "read from each run's slm.json (result.figures); obtained: " + ", ".join(hows)
                  + ("; projected figures are projections onto the device, not measurements"
                     if "projected" in hows else ""))]


def _rel_link(from_html: Path, run_dir: Path) -> str:
    for name in ("report.html", "index.html"):
        if (run_dir / name).is_file():
            return os.path.relpath(run_dir / name, from_html.parent)  # the template escapes it
    return os.path.relpath(run_dir, from_html.parent)


def build_index(reports_dir: Path | str, title: str = "slm-lab reports") -> Path:
    """reports/index.html: the decisions first, each a sentence with its intervals linking to its evidence —
    what growing cost on the device (a compare of profiles), which export the plan recommends for its target
    and why (a plan), the ablation's verdict, then any other run's own headline — then the comparisons, then
    every run with its kind, date, key figures in words and units, how they were obtained, and a link. A
    folder whose slm.json cannot be read is listed as unreadable, with the reason, and the index goes on."""
    reports_dir = Path(reports_dir)
    runs, comps, bad, lead = [], [], [], []
    for d in sorted(p for p in reports_dir.iterdir() if p.is_dir()):
        try:
            rec = read_record(d)
            figs = figures_of(rec) if rec else []
        except SlmError as e:
            bad.append([d.name, str(e)])
            continue
        if rec is None:
            continue
        created = str(rec.get("created", ""))[:16].replace("T", " ")
        link = _rel_link(reports_dir / "index.html", d)
        res = rec.get("result") or {}
        if res.get("headline"):  # a run's own one-sentence result (the plan's answer, the ablation's verdict)
            lead.append((_decision(rec["kind"], res), str(res["headline"]), link))
        if rec["kind"] == "compare":
            names = next((f.value for f in figs if f.name == "runs"), "")
            comps.append(([d.name, created, str(names)], link))
        else:
            keys = "; ".join(key_text(f) + (f" {MARK_DISTURBED}" if f.disturbed else "")
                             for f in key_figures(figs))
            runs.append(([d.name, rec["kind"], created, keys, how_obtained(figs)], link))
    if not runs and not comps and not bad:
        raise SlmError(f"no runs with slm.json under {reports_dir}")
    tables = []
    if comps:
        tables.append(Table("Comparisons", ["comparison", "created", "runs"], [r for r, _ in comps],
                            note="each says on top what changed and what stayed within noise",
                            links=[h for _, h in comps]))
    tables.append(Table("Runs", ["run", "kind", "created", "key figures", "how obtained"],
                        [r for r, _ in runs],
                        note=f"Click a run to open its report. {MARK_DISTURBED} measured while other "
                             "processes used the CPU; ± = 95 % interval.", links=[h for _, h in runs]))
    if bad:
        tables.append(Table("Unreadable folders (skipped)", ["folder", "why"], bad,
                            note="re-run the step that wrote each, or remove the folder"))
    head = [Figure("runs_listed", "runs listed", len(runs), "runs", group="setting", how="setting",
                   exact=True),
            Figure("comparisons", "comparisons", len(comps), "comparisons", group="setting", how="setting",
                   exact=True)]
    lead.sort(key=lambda x: DECISIONS.index(x[0]) if x[0] in DECISIONS else len(DECISIONS))
    return render_report(reports_dir / "index.html", title, "index", head, [], tables, lead=lead or None)


# the index's decisions, in the order a reader takes them
DECISIONS = ("What growing cost (the profiles compared):", "What to ship:", "The ablation's verdict:",
             "Compared:")


def _decision(kind: str, result: dict) -> str:
    """The label a run's headline gets on the index."""
    if kind == "compare":
        return DECISIONS[0] if set(result.get("kinds") or ()) == {"profile"} else DECISIONS[3]
    return {"plan": DECISIONS[1], "ablate": DECISIONS[2]}.get(kind, f"{kind}:")


def compare_runs(runs: list[Path | str], out: Path | str, force: bool = False) -> Path:
    """`slm report compare` (and the demo's compare steps): `out`/index.html and `out`/slm.json, written
    through the output guard — never over one of the runs it reads, even with force. Returns the page."""
    out = Path(out)
    with atomic_dir(out, force, runs) as tmp:
        _, lead, kinds = _compare(runs, tmp / "index.html")
        write_record(tmp, "compare", {"runs": [str(r) for r in runs]},
                     result={"headline": " ".join(lead), "kinds": kinds},
                     figures=[setting("runs", "runs compared", ", ".join(Path(r).name for r in runs))])
    return out / "index.html"
