"""The report written beside every merge output: what was merged and how much each layer moved."""

from __future__ import annotations

from pathlib import Path

from slm.report.render import Figure, Table, new_figure, render_report, svg_of


def write_merge_report(out_dir: Path, recipe, result: dict) -> Path:
    changes = result["changes"]
    layers = [c for c in changes if c["layer"] is not None]
    fig, ax = new_figure(7.5, 3.0)
    ax.bar([c["layer"] for c in layers], [c["rel_change"] for c in layers], color="#4a78b5")
    ax.set_xlabel("layer index (output model)")
    ax.set_ylabel("‖θ_out − θ_target‖ / ‖θ_target‖")
    ax.set_title("Relative change of each layer against the target model")
    fig_ = Figure("Per-layer change", svg_of(fig), "computed while streaming the merge (fp64 sums of squares)")
    rows = [[c["tensor"], "—" if c["layer"] is None else ("none (new layer)" if c["mapped_from"] is None else c["mapped_from"]),
             c["rel_change"]] for c in changes]
    table = Table("Per-layer table", ["layer / tensor", "residual/merge source layer", "relative change"], rows,
                  highlight=[k for k, c in enumerate(changes) if c["layer"] is not None and c["mapped_from"] is None])
    models = [m["model"] for m in recipe.models] + [p for p in (recipe.cpt, recipe.base, recipe.instruct) if p]
    summary = {**result["summary"], "target": recipe.target(), "inputs": ", ".join(dict.fromkeys(models))}
    return render_report(Path(out_dir) / "report.html", f"merge: {recipe.method}", "merge", summary, [fig_], [table],
                         notes=[f"{k} = {v}" for k, v in vars(recipe).items() if v not in (None, [], "")])
