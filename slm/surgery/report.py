"""The reports written beside every expand / upscale output (the layer map) and every merge output (how much
each layer moved). They live with surgery, which knows what a record means; slm.report only renders."""

from __future__ import annotations

from pathlib import Path

from slm.report.render import Figure, Table, new_figure, render_report, svg_of
from slm.surgery.layers import layer_table


def _layer_figure(record: dict) -> Figure:
    rows = layer_table(record)
    fig, ax = new_figure(7.5, 3.0)
    xs = [r["layer"] for r in rows]
    ax.bar(xs, [r["source"] for r in rows], color=["#e07a2f" if r["new"] else "#4a78b5" for r in rows])
    ax.set_xlabel("output layer index")
    ax.set_ylabel("source layer index (original model)")
    ax.set_title("Where each layer comes from")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="#4a78b5", label="original layer"), Patch(color="#e07a2f", label="new layer")],
              loc="upper left", fontsize=8)
    return Figure("Layer map", svg_of(fig), "read from the surgery record written into config.json")


def write_surgery_report(out_dir: Path, kind: str, step: dict, result: dict) -> Path:
    """report.html of an expand / upscale: the layer map and, after expand, the parity check."""
    record = result["record"]
    summary = {"method": step.get("method"), "layers before": result["num_layers"]["before"],
               "layers after": result["num_layers"]["after"], "new layers": len(record["new_layers"]),
               "bytes written": result["bytes"]}
    parity = result.get("parity")
    if parity:
        summary["parity: max |Δ logits| (fp32)"] = parity["max_abs_diff"]
        summary["parity: bit-identical"] = parity["bit_identical"]
    zeroed = set(result.get("zeroed_tensors", []))
    rows = [[r["layer"], r["source"], "new" if r["new"] else "original",
             sum(1 for z in zeroed if z.startswith(f"model.layers.{r['layer']}."))] for r in layer_table(record)]
    table = Table("Per-layer table", ["layer", "source layer", "role", "zeroed tensors"], rows,
                  highlight=[i for i, r in enumerate(rows) if r[2] == "new"])
    return render_report(Path(out_dir) / "report.html", f"{kind}: {step.get('method')}", kind, summary,
                         [_layer_figure(record)], [table], notes=[f"{k} = {v}" for k, v in step.items()])


def write_merge_report(out_dir: Path, recipe, result: dict) -> Path:
    """report.html of a merge: per-layer relative change against the target, and where each residual came from."""
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
