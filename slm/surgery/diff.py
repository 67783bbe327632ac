"""`slm diff`: weight-space diagnostics of a tuned model against its source, per layer and per weight matrix.

- Relative weight change ‖W − W0‖_F / ‖W0‖_F (per matrix, and per layer over all its tensors).
- Intruder dimensions (Shuttleworth, Andreas, Torralba & Sharma 2024, "LoRA vs Full Fine-tuning: An Illusion
  of Equivalence", arXiv:2410.21228, Definition 1): a singular vector y_j of the tuned matrix is an intruder
  when max_i |cos(y_j, x_i)| < ε over the singular vectors x_i of the source matrix. As in the paper's main
  text we look at the tuned matrix's top k = 10 left singular vectors with ε = 0.5 (the paper also sweeps ε;
  both are arguments). |cos| because a singular vector's sign is arbitrary. The source side uses all its
  singular vectors unless `reference` narrows it to its top ones (fewer reference vectors, more intruders).

Layers are matched through the tuned model's surgery record when depths differ (layer j ↔ source layer
source_layers[j]; layers in new_layers have no source and are listed as new); at equal depth layer j ↔ layer
j. Tensors are read one at a time (TensorReader): peak memory is two matrices and their SVDs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from slm.errors import SlmError
from slm.figure import Figure, analytic, from_file
from slm.guard import atomic_dir, guard_output
from slm.io import TensorReader
from slm.record import write_record
from slm.report.render import Chart, Table, new_figure, render_report, svg_of  # matplotlib: deferred
from slm.surgery.layers import layer_name, prior_record, split_layer_name

MATRICES = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
            "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")


@dataclass
class DiffArgs:
    k: int = 10  # top singular vectors of the tuned matrix examined (Shuttleworth et al. 2024: 10)
    # intruder when its best |cos| to the source's singular vectors is below this (paper: 0.5)
    epsilon: float = 0.5
    reference: int = 0  # source singular vectors compared against: its top `reference` (0 = all of them)

    def __post_init__(self):
        if self.k < 1 or not 0 < self.epsilon < 1 or self.reference < 0:
            raise SlmError("slm diff: k ≥ 1, 0 < epsilon < 1 and reference ≥ 0 are needed")


def intruders(w: torch.Tensor, w0: torch.Tensor, args: DiffArgs) -> dict:
    """Intruder dimensions of `w` against `w0` (Shuttleworth et al. 2024, Def. 1): count among the top k left
    singular vectors of w, and the best |cos| of each to w0's left singular vectors."""
    if torch.equal(w, w0):  # identical: every singular vector is its own best match (cos 1)
        return {"intruders": 0, "best_cos": [1.0] * min(args.k, *w.shape)}
    u = torch.linalg.svd(w.double(), full_matrices=False)[0][:, :args.k]
    u0 = torch.linalg.svd(w0.double(), full_matrices=False)[0]
    if args.reference:
        u0 = u0[:, :args.reference]
    best = (u.T @ u0).abs().max(dim=1).values
    return {"intruders": int((best < args.epsilon).sum()), "best_cos": [round(float(c), 4) for c in best]}


def match_layers(config: dict, source_config: dict) -> list[tuple[int, int | None]]:
    """(tuned layer, source layer or None for a new layer), through the tuned model's surgery record."""
    n, n0 = config["num_hidden_layers"], source_config["num_hidden_layers"]
    if n == n0:
        return [(j, j) for j in range(n)]
    rec = prior_record(config)
    if rec["original_num_layers"] != n0:
        raise SlmError(f"the model has {n} layers and the source {n0}, and its surgery record starts from "
                       f"{rec['original_num_layers']}: pass the model it was grown from as SOURCE")
    new = set(rec["new_layers"])
    return [(j, None if j in new else s) for j, s in enumerate(rec["source_layers"])]


def _rel(w: torch.Tensor, w0: torch.Tensor) -> tuple[float, float]:
    """(‖w − w0‖², ‖w0‖²) in float64."""
    return float((w.double() - w0.double()).square().sum()), float(w0.double().square().sum())


def diff(model: Path | str, source: Path | str, args: DiffArgs | None = None) -> dict:
    """Per-layer relative change and intruder dimensions of `model` against `source` (see the module
    docstring)."""
    args = args or DiffArgs()
    tuned, src = TensorReader(model), TensorReader(source)
    try:
        pairs = match_layers(tuned.config, src.config)
        new = set(prior_record(tuned.config)["new_layers"])
        layers = [_layer(tuned, src, j, s, j in new, args) for j, s in pairs]
        others = _others(tuned, src)
    finally:
        tuned.close()
        src.close()
    compared = [r for r in layers if r["source"] is not None]
    totals = {"layers": len(layers), "new_layers": sum(r["source"] is None for r in layers),
              "changed_layers": sum(r["rel_change"] > 0 for r in compared),
              "intruders": sum(r["intruders"] for r in compared),
              "max_layer_change": max((r["rel_change"] for r in compared), default=0.0)}
    return {"model": str(model), "source": str(source), "args": asdict(args), "layers": layers,
            "other": others, "totals": totals}


def diff_figures(result: dict) -> list[Figure]:
    t, a = result["totals"], result["args"]
    return [analytic("layers", "layers", t["layers"], "layers"),
            analytic("new_layers", "new layers (not compared)", t["new_layers"], "layers"),
            from_file("changed_layers", "layers whose weights changed", t["changed_layers"], "layers",
                      group="model", key=True),
            from_file("intruders", f"intruder dimensions (top {a['k']}, ε {a['epsilon']}; Shuttleworth et "
                      "al. 2024)", t["intruders"], "dimensions", "lower", "model", key=True),
            from_file("max_layer_change", "largest relative weight change of a layer", t["max_layer_change"],
                      "1",
                      group="model", key=True)]


def _layer(tuned: TensorReader, src: TensorReader, j: int, s: int | None, new: bool, args: DiffArgs) -> dict:
    row = {"layer": j, "source": s, "new": new, "rel_change": None, "intruders": 0, "matrices": {}}
    if s is None:
        return row
    num = den = 0.0
    for name in sorted(k for k in tuned.keys() if split_layer_name(k)[0] == j):
        rest = split_layer_name(name)[1]
        w, w0 = tuned.get(name).float(), src.get(layer_name(s, rest)).float()
        if w.shape != w0.shape:
            raise SlmError(f"{name} has shape {list(w.shape)} but the source's layer {s} has "
                           f"{list(w0.shape)}: SOURCE must be the model this one was tuned from")
        d, n = _rel(w, w0)
        num, den = num + d, den + n
        if rest in MATRICES:
            row["matrices"][rest] = {"rel_change": math.sqrt(d / n) if n else float("nan"),
                                     **intruders(w, w0, args)}
    row["rel_change"] = math.sqrt(num / den) if den else 0.0
    row["intruders"] = sum(m["intruders"] for m in row["matrices"].values())
    return row


def _others(tuned: TensorReader, src: TensorReader) -> dict:
    """Relative change of the tensors outside the layers (embeddings, final norm, head)."""
    out = {}
    for name in tuned.keys():
        if split_layer_name(name)[0] is None and name in src and tuned.shape(name) == src.shape(name):
            d, n = _rel(tuned.get(name).float(), src.get(name).float())
            out[name] = math.sqrt(d / n) if n else float("nan")
    return out


def run_diff(model: Path | str, source: Path | str, args: DiffArgs | None = None,
             out: Path | str | None = None, force: bool = False) -> dict:
    """`slm diff`: diff, and with `out` write slm.json + report.html there through the output guard."""
    args = args or DiffArgs()
    if out is None:
        return diff(model, source, args)

    with guard_output(out, [model, source], force):  # checked and locked before the long part
        result = diff(model, source, args)
        with atomic_dir(out, force, [model, source]) as tmp:
            write_record(tmp, "diff", asdict(args), {"model": model, "source": source}, result,
                         figures=diff_figures(result))
            write_diff_report(tmp, result)
    return result


def write_diff_report(out_dir: Path, result: dict) -> Path:
    """report.html: a per-layer chart (relative change, intruders; new layers marked) and the per-matrix
    table."""

    layers, a = result["layers"], result["args"]
    fig, ax = new_figure(7.5, 3.2)
    xs = [r["layer"] for r in layers]
    ax.bar(xs, [r["rel_change"] or 0 for r in layers],
           color=["#e07a2f" if r["source"] is None else "#4a78b5" for r in layers])
    ax.set_xlabel("layer index (tuned model); orange = new layer, not compared")
    ax.set_ylabel("‖W − W0‖ / ‖W0‖ (layer)")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["intruders"] if r["source"] is not None else float("nan") for r in layers], "k.-")
    ax2.set_ylabel(f"intruder dimensions (top {a['k']}, ε {a['epsilon']})")
    ax.set_title("Per-layer change against the source, and intruder dimensions")
    chart = Chart("Per-layer weight change and intruders", svg_of(fig),
                    "computed from the weights (float64 norms; SVD of every matrix of a compared layer)")
    rows = [[r["layer"], "new" if r["source"] is None else r["source"], m, v["rel_change"], v["intruders"],
             min(v["best_cos"])]
            for r in layers for m, v in (r["matrices"].items()
                                         or [("—", {"rel_change": None, "intruders": 0,
                                                    "best_cos": [float("nan")]})])]
    table = Table("Per matrix",
                  ["layer", "source layer", "matrix", "relative change", "intruders", "lowest best |cos|"],
                  rows, highlight=[i for i, row in enumerate(rows) if row[4]])
    other = Table("Outside the layers", ["tensor", "relative change"],
                  [[k, v] for k, v in result["other"].items()])
    notes = [f"intruder dimension: one of the tuned matrix's top {a['k']} left singular vectors whose "
             "largest |cos| to the source matrix's singular vectors "
             f"({'all' if not a['reference'] else 'top ' + str(a['reference'])}) is below ε = {a['epsilon']} "
             "(Shuttleworth et al. 2024, arXiv:2410.21228)",
             f"model {result['model']} against source {result['source']}"]
    return render_report(Path(out_dir) / "report.html", "diff: weight change and intruder dimensions", "diff",
                         diff_figures(result), [chart], [table, other], notes=notes)
