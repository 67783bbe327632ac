"""The small report written beside every expand / upscale / merge output."""

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
