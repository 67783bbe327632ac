"""A model's spec as an output folder: `report.html` (key figures and memory at each context) and `slm.json`.

What `slm info` prints, kept as a run that `slm report index` and `slm report compare` can read. Analytic only:
everything comes from config.json through ModelSpec, nothing is measured.
"""

from __future__ import annotations

from pathlib import Path

from slm.guard import atomic_dir
from slm.record import write_record
from slm.report.render import Table, render_report
from slm.spec import load_spec

MIB = 2**20


def write_info(model_dir: Path | str, out: Path | str, force: bool = False, title: str | None = None) -> dict:
    """Write `out`/report.html and `out`/slm.json (kind "info") for the model in `model_dir`; returns the record.
    An existing `out` is refused unless `force`. `title` defaults to "<folder name>: model spec"."""
    s = load_spec(model_dir).summary()
    summary = {"parameters (M)": round(s["params"] / 1e6, 1), "layers": s["layers"], "KV heads": s["kv_heads"],
               "KV bytes/token (f16)": s["kv_bytes_per_token"]["f16"],
               "KV overtakes weights at": s["kv_crossover_context"]}
    rows = [[m["context"], m["weights"] / MIB, m["kv_cache"] / MIB, m["total"] / MIB, m["kv_share"]]
            for m in s["memory"]]
    memory = Table("Memory at context (fp32 weights, f16 KV cache)",
                   ["context", "weights MiB", "KV MiB", "total MiB", "KV share"], rows)
    with atomic_dir(out, force=force, inputs=[model_dir]) as tmp:
        render_report(tmp / "report.html", title or f"{Path(model_dir).name}: model spec", "info", summary, [],
                      [memory], notes=["computed from config.json (analytic, no measurement)"])
        return write_record(tmp, "info", {"model": str(model_dir)}, result={"summary": summary, "spec": s})
