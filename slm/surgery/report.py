"""The reports written beside every expand / upscale output (the layer map) and every merge output (how much
each layer moved). They live with surgery, which knows what a record means; slm.report only renders."""

from __future__ import annotations

from pathlib import Path

from slm.figure import Figure, analytic, from_file, setting
from slm.report.render import Chart, Table, new_figure, render_report, svg_of
from slm.surgery.layers import layer_table


def _layer_chart(record: dict) -> Chart:
    rows = layer_table(record)
    fig, ax = new_figure(7.5, 3.0)
    xs = [r["layer"] for r in rows]
    ax.bar(xs, [r["source"] for r in rows], color=["#e07a2f" if r["new"] else "#4a78b5" for r in rows])
    ax.set_xlabel("output layer index")
    ax.set_ylabel("source layer index (original model)")
    ax.set_title("Where each layer comes from")
    from matplotlib.patches import Patch  # matplotlib: deferred, a heavy import

    ax.legend(handles=[Patch(color="#4a78b5", label="original layer"),
                       Patch(color="#e07a2f", label="new layer")],
              loc="upper left", fontsize=8)
    return Chart("Layer map", svg_of(fig), "read from the surgery record written into config.json")


def surgery_figures(step: dict, result: dict) -> list[Figure]:
    """The figures of an expand / upscale / prune: the layer counts, the bytes written and, where it ran, the
    parity check of the output's logits against the source."""
    n = result["num_layers"]
    out = [setting("method", "method", step.get("method")),
           analytic("layers_before", "layers before the step", n["before"], "layers"),
           analytic("layers_after", "layers after the step", n["after"], "layers", key=True),
           analytic("new_layers", "new layers", len(result["record"]["new_layers"]), "layers", key=True),
           from_file("bytes", "weights written", result["bytes"], "bytes", "lower")]
    parity = result.get("parity")
    if parity:
        out += [Figure("parity.max_abs", "largest logit change after surgery (fp32)", parity["max_abs_diff"],
                       "1", "lower", "quality", exact=True, key=True, source="fixed prompts, every position"),
                Figure("parity.bit_identical", "logits bit-identical after surgery", parity["bit_identical"],
                       "1", "none", "quality", exact=True)]
    return out


def write_surgery_report(out_dir: Path, kind: str, step: dict, result: dict) -> Path:
    """report.html of an expand / upscale: the layer map and, after expand, the parity check."""
    record = result["record"]
    zeroed = set(result.get("zeroed_tensors", []))
    rows = [[r["layer"], r["source"], "new" if r["new"] else "original",
             sum(1 for z in zeroed if z.startswith(f"model.layers.{r['layer']}."))]
            for r in layer_table(record)]
    table = Table("Per-layer table", ["layer", "source layer", "role", "zeroed tensors"], rows,
                  highlight=[i for i, r in enumerate(rows) if r[2] == "new"])
    return render_report(Path(out_dir) / "report.html", f"{kind}: {step.get('method')}", kind,
                         result["figures"], [_layer_chart(record)], [table],
                         notes=[f"{k} = {v}" for k, v in step.items()])


def write_merge_report(out_dir: Path, recipe, result: dict) -> Path:
    """report.html of a merge: per-layer relative change against the target, and where each residual came
    from."""
    changes = result["changes"]
    layers = [c for c in changes if c["layer"] is not None]
    fig, ax = new_figure(7.5, 3.0)
    ax.bar([c["layer"] for c in layers], [c["rel_change"] for c in layers], color="#4a78b5")
    ax.set_xlabel("layer index (output model)")
    ax.set_ylabel("‖θ_out − θ_target‖ / ‖θ_target‖")
    ax.set_title("Relative change of each layer against the target model")
    chart = Chart("Per-layer change", svg_of(fig),
                  "computed while streaming the merge (fp64 sums of squares)")
    rows = [[c["tensor"],
             "—" if c["layer"] is None
             else ("none (new layer)" if c["mapped_from"] is None else c["mapped_from"]),
             c["rel_change"]] for c in changes]
    table = Table("Per-layer table", ["layer / tensor", "residual/merge source layer", "relative change"],
                  rows, highlight=[k for k, c in enumerate(changes)
                                   if c["layer"] is not None and c["mapped_from"] is None])
    models = ([m["model"] for m in recipe.models]
              + [p for p in (recipe.cpt, recipe.base, recipe.instruct) if p])
    figures = result["figures"] + [setting("target", "merge target", recipe.target()),
                                   setting("inputs", "inputs", ", ".join(dict.fromkeys(models)))]
    return render_report(Path(out_dir) / "report.html", f"merge: {recipe.method}", "merge", figures, [chart],
                         [table],
                         notes=[f"{k} = {v}" for k, v in vars(recipe).items() if v not in (None, [], "")])
