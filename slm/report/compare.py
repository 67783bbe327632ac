"""`slm report compare A B ...` and the reports index: several runs side by side, differences highlighted.

Works across kinds (profile, export, train, expand, merge…) because every step's slm.json carries a flat
`result.summary` of its key figures; runs of the same kind line up row by row, others show blanks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from slm.errors import SlmError
from slm.record import read_record
from slm.report.figures import is_companion, lookup, value_text
from slm.report.lineup import LEGEND, MARK_DISTURBED, by_group, estimate, lineup, sentences
from slm.report.render import Figure, Table, new_figure, render_report, svg_of


def load_run(path: Path | str) -> dict:
    """The slm.json of a run folder (or of the folder a report.html / index.html lives in)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".html":
        p = p.parent
    rec = read_record(p)
    if rec is None:
        raise SlmError(f"{path} has no slm.json: pass an output folder written by an slm verb")
    rec["_path"] = str(p)
    return rec


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def _model_figures(folder: Path) -> dict:
    """For a run folder that is a model (import, expand, upscale, merge, train's final): what `slm info` says
    of it, so that e.g. before/after expansion line up on parameters, layers and KV-cache bytes."""
    from slm.spec import load_spec

    cfg = folder / "config.json" if (folder / "config.json").is_file() else folder / "final" / "config.json"
    if not cfg.is_file():
        return {}
    try:
        s = load_spec(cfg.parent).summary()
    except SlmError:  # not a Llama-family config: nothing to add
        return {}
    return {"model.params": s["params"], "model.layers": s["layers"], "model.kv_heads": s["kv_heads"],
            "model.weights_MiB (fp32)": s["weight_bytes"]["float32"] / 2**20,
            "model.kv_bytes_per_token (f16)": s["kv_bytes_per_token"]["f16"]}


def _label(rec: dict, i: int) -> str:
    return f"{chr(65 + i) if i < 26 else i}: {Path(rec['_path']).name} ({rec['kind']})"


# The key figures of each kind of run (regexes over its flat summary, in this order): what the index shows and
# what a compare of same-kind runs charts; other kinds use their first summary entries. Chosen as what a
# reader compares across runs at a glance.
KEY_FIGURES = {
    "profile": [r"device", r"llama\.cpp\.tg\d+@d0\.tok_s", r"llama\.cpp\.pp\d+\.tok_s", r"projected\.tg\d+@d0\.tok_s",
                r"kv_share_at_max_context_f16"],
    "export": [r"hf_perplexity", r"(gguf|onnx)_\w+_ppl", r"(gguf|onnx)_\w+_mb"],
    "eval": [r"OP", r"BWT", r".* ppl"],
    "train": [r".* ppl before", r".* ppl", r"trainable params", r"tok/s \(median\)"],
    "ablate": [r".* domain loss gain", r".* probe loss rise"],
}
MAX_KEY_FIGURES = 10
MAX_BARS = 24  # bars in a compare figure


def _key_only(kind: str, names: list[str]) -> list[str]:
    """`names` narrowed to the kind's key figures, in KEY_FIGURES order; all of them when none matches."""
    pats = KEY_FIGURES.get(kind, [])
    return list(dict.fromkeys(n for p in pats for n in names if re.fullmatch(p, n))) or names


def key_figures(kind: str, summary: dict, most: int = MAX_KEY_FIGURES) -> str:
    """`label: value unit; …` for the index — labels and units from slm.report.figures, ± where the run recorded
    an interval, † where it was measured under interference."""
    s = _flat(summary)
    keys = [k for k in s if not is_companion(k) and not lookup(k).setting
            and (not isinstance(s[k], str) or len(s[k]) < 40)]  # no sentences in a table cell
    out = []
    for k in _key_only(kind, keys)[:most]:
        r, e = lookup(k), estimate(s, k)
        text = value_text(s[k], r.unit) if e is None or e.ci is None else f"{e.mean:.1f} ± {e.ci:.1f} {r.unit}".strip()
        out.append(f"{r.label}: {text}" + (f" {MARK_DISTURBED}" if e is not None and e.disturbed else ""))
    return "; ".join(out)


def how_obtained(kind: str, summary: dict) -> str:
    """How a run's figures were obtained, in words (the run's own `how` where it recorded one)."""
    how = summary.get("how") if isinstance(summary.get("how"), str) else HOW_BY_KIND.get(kind, "")
    if any(lookup(k).how == "projected" for k in summary):
        err = summary.get("projected.decode_expected_error")
        proj = f"{summary.get('device', 'device')} figures projected" + (
            f" (decode within ±{err:.0%} on published points held out of its calibration)" if isinstance(err, (int, float)) else "")
        how = "; ".join(x for x in (how, proj) if x)
    return how


HOW_BY_KIND = {"info": "analytic, from config.json", "export": "measured on this host (validation)",
               "train": "measured on this host during training", "eval": "measured on this host",
               "expand": "computed from the weights written", "upscale": "computed from the weights written",
               "merge": "computed from the weights written", "data": "counted while tokenizing",
               "import": "read from the GGUF", "compare": "read from the compared runs",
               "ablate": "measured on this host (held-out losses, paired s.e. over the same tokens)",
               "plan": "projected by the calibrated device model", "prune": "measured on this host (held-out text)",
               "diff": "computed from the weights"}


def compare(runs: list[Path | str], out_html: Path | str) -> Path:
    """Write one self-contained page comparing the runs and return its path: a few sentences computed from the
    table, the figures grouped (speed, memory, size, quality, training, model) as mean ± 95 % interval with the
    change against A and its uncertainty, the settings apart, and the arguments."""
    if len(runs) < 2:
        raise SlmError("compare needs at least two runs: slm report compare A B [C ...]")
    recs = [load_run(r) for r in runs]
    labels = [_label(r, i) for i, r in enumerate(recs)]
    short = [lab.split(" (")[0] for lab in labels]
    summaries = [{**_model_figures(Path(r["_path"])), **_flat(r.get("result", {}).get("summary", {}))} for r in recs]
    lines = lineup(summaries)
    tables = []
    for group, rows in by_group(lines).items():
        if group == "setting":
            continue
        tables.append(Table(GROUP_TITLES[group], ["figure", "unit"] + short + ["change vs A", "verdict"],
                            [ln.row() for ln in rows], highlight=[i for i, ln in enumerate(rows) if ln.significant],
                            note=LEGEND))
    settings = [ln for ln in lines if ln.group == "setting"]
    if settings:
        tables.append(Table("Settings (how the runs were made; not compared as figures)", ["setting"] + short,
                            [[ln.label] + ln.cells for ln in settings],
                            highlight=[i for i, ln in enumerate(settings) if ln.differs]))
    arows, ahl = _rows([_flat(r.get("args", {})) for r in recs])
    tables.append(Table("Arguments", ["argument"] + short + ["change vs A"], arows, highlight=ahl))
    figures = _relative_figure(recs, labels, summaries, lines)
    summary = {lab: f"{r['kind']}, created {r.get('created', '?')}, {r['_path']}" for lab, r in zip(labels, recs)}
    out_html = Path(out_html)
    links = [(lab, _rel_link(out_html, Path(r["_path"]))) for lab, r in zip(labels, recs)]
    return render_report(out_html, "Compare: " + " vs ".join(Path(r["_path"]).name for r in recs), "compare",
                         summary, figures, tables, links=links, lead=sentences(lines, short))


GROUP_TITLES = {"speed": "Speed", "memory": "Memory", "size": "Size", "quality": "Quality", "training": "Training",
                "model": "Model shape"}


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


def _relative_figure(recs: list[dict], labels: list[str], summaries: list[dict], lines: list) -> list[Figure]:
    """Bars of each run's figures relative to run A, with 95 % intervals where recorded (none when no figure
    differs)."""
    # numeric figures (not settings) present in A (non-zero) and another run that differ; for runs of one kind,
    # only that kind's key figures (the tables keep everything)
    est = [[estimate(s, ln.key) for s in summaries] for ln in lines]
    keep = [(ln, e) for ln, e in zip(lines, est) if ln.group != "setting" and ln.differs and e[0] is not None
            and e[0].mean != 0 and any(x is not None for x in e[1:])]
    kinds = {r["kind"] for r in recs}
    if len(kinds) == 1:
        names = set(_key_only(kinds.pop(), [ln.key for ln, _ in keep]))
        keep = [(ln, e) for ln, e in keep if ln.key in names]
    keep = keep[:MAX_BARS]
    if not keep:
        return []
    fig, ax = new_figure(8, 0.45 * len(keep) + 1.5)
    width = 0.8 / len(recs)
    for j, lab in enumerate(labels):
        vals = [e[j].mean / e[0].mean if e[j] else float("nan") for _, e in keep]
        errs = [(e[j].ci or 0) / abs(e[0].mean) if e[j] else 0 for _, e in keep]
        ax.barh([i + j * width for i in range(len(keep))], vals, height=width, label=lab, xerr=errs, capsize=2)
    ax.set_yticks([i + 0.4 - width / 2 for i in range(len(keep))], [ln.label for ln, _ in keep])
    ax.invert_yaxis()  # first figure on top, as in the table
    ax.axvline(1.0, color="#888", lw=0.8)
    ax.set_xlabel("value relative to run A (A = 1; each figure in its own unit); whiskers: 95 % interval")
    ax.set_title("Figures that differ, relative to run A")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    hows = [f"{lab.split(':')[0]}: {s['how']}" for lab, s in zip(labels, summaries) if isinstance(s.get("how"), str)]
    return [Figure("Figures that differ, relative to A", svg_of(fig),
                   "read from each run's slm.json (result.summary)" +
                   (f"; {', '.join(hows)}" if hows else "; each figure obtained as its own report says") +
                   ("; projected figures are projections onto the device, not measurements"
                    if any(lookup(ln.key).how == "projected" for ln, _ in keep) else ""))]


def _rel_link(from_html: Path, run_dir: Path) -> str:
    import os

    for name in ("report.html", "index.html"):
        if (run_dir / name).is_file():
            return os.path.relpath(run_dir / name, from_html.parent)  # the template escapes it
    return os.path.relpath(run_dir, from_html.parent)


def build_index(reports_dir: Path | str, title: str = "slm-lab reports") -> Path:
    """reports/index.html: the comparisons first, then every run with its kind, date, three to five key figures in
    words and units, how they were obtained, and a link."""
    reports_dir = Path(reports_dir)
    runs, comps, lead = [], [], []
    for d in sorted(p for p in reports_dir.iterdir() if p.is_dir()):
        rec = read_record(d)
        if rec is None:
            continue
        if rec.get("result", {}).get("headline"):  # a run's own one-sentence result (e.g. the ablation's)
            lead.append(str(rec["result"]["headline"]))
        summary = _flat(rec.get("result", {}).get("summary", {}))
        created = rec.get("created", "")[:16].replace("T", " ")
        link = _rel_link(reports_dir / "index.html", d)
        if rec["kind"] == "compare":
            comps.append(([d.name, created, str(summary.get("runs", ""))], link))
        else:
            runs.append(([d.name, rec["kind"], created, key_figures(rec["kind"], summary, INDEX_FIGURES),
                          how_obtained(rec["kind"], summary)], link))
    if not runs and not comps:
        raise SlmError(f"no runs with slm.json under {reports_dir}")
    tables = []
    if comps:
        tables.append(Table("Comparisons", ["comparison", "created", "runs"], [r for r, _ in comps],
                            note="each says on top what changed and what stayed within noise",
                            links=[h for _, h in comps]))
    tables.append(Table("Runs", ["run", "kind", "created", "key figures", "how obtained"], [r for r, _ in runs],
                        note=f"Click a run to open its report. {MARK_DISTURBED} measured while other processes used "
                             "the CPU; ± = 95 % interval over the repetitions.", links=[h for _, h in runs]))
    return render_report(reports_dir / "index.html", title, "index", {"runs listed": len(runs), "comparisons": len(comps)},
                         [], tables, lead=lead or None)


INDEX_FIGURES = 5  # key figures per run on the index: what a reader takes in at a glance


def compare_runs(runs: list[Path | str], out: Path | str, force: bool = False) -> Path:
    """`slm report compare` (and the demo's compare steps): `out`/index.html and `out`/slm.json, written through the
    output guard — never over one of the runs it reads, even with force. Returns the page."""
    from slm.guard import atomic_dir
    from slm.record import write_record

    out = Path(out)
    with atomic_dir(out, force, runs) as tmp:
        compare(runs, tmp / "index.html")
        write_record(tmp, "compare", {"runs": [str(r) for r in runs]},
                     result={"summary": {"runs": ", ".join(Path(r).name for r in runs)}})
    return out / "index.html"
