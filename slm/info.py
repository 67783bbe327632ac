"""A model's spec as an output folder: `report.html` (key figures, memory against context) and `slm.json`.

What `slm info` prints, kept as a run that `slm report index` and `slm report compare` can read. Analytic
only: everything comes from config.json through ModelSpec, nothing is measured.
"""

from __future__ import annotations

from pathlib import Path

from slm.guard import atomic_dir
from slm.record import write_record
from slm.report.render import Chart, Table, new_figure, render_report, svg_of
from slm.spec import ModelSpec, load_spec

MIB = 2**20


def memory_chart(spec: ModelSpec, dtype: str | None = None) -> Chart:
    """Weights and f16 KV cache against context (log scale), with the KV share and where it passes the
    weights: where a long context, not the model, decides the memory."""
    hi = max(spec.max_context, 1024)
    ctx = sorted({int(2 ** (k / 4)) for k in range(32, 200) if 2 ** (k / 4) <= hi} | {hi})
    rows = [spec.memory_at(c, dtype) for c in ctx]
    fig, ax = new_figure(7.0, 3.4)
    ax.stackplot(ctx, [r["weights"] / MIB for r in rows], [r["kv_cache"] / MIB for r in rows],
                 labels=[f"weights ({dtype or spec.dtype})", "KV cache (f16)"], alpha=0.8)
    cross = spec.kv_crossover_context(dtype)
    if cross <= hi:
        ax.axvline(cross, color="k", ls=":", lw=1, label=f"KV cache = weights at {cross:,} tokens")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens, log scale)")
    ax.set_ylabel("memory (MiB)")
    share = ax.twinx()
    share.plot(ctx, [100 * r["kv_share"] for r in rows], color="#c0392b", lw=1.2, label="KV share (right)")
    share.set_ylabel("KV-cache share of memory (%)")
    share.set_ylim(0, 100)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = share.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    ax.set_title("Memory against context: weights and KV cache")
    return Chart("Memory against context", svg_of(fig),
                 "analytic, from config.json: weights = parameters × bytes of the stored dtype; KV cache = 2 "
                 "× layers × KV heads × head_dim × 2 bytes (f16) per token; no compute buffers (see slm "
                 "plan)")


def write_info(model_dir: Path | str, out: Path | str, force: bool = False, title: str | None = None) -> dict:
    """Write `out`/report.html and `out`/slm.json (kind "info") for the model in `model_dir`; returns the
    record. An existing `out` is refused unless `force`. `title` defaults to "<folder name>: model spec"."""
    spec = load_spec(model_dir)
    s = spec.summary()
    figures = spec.figures("")
    rows = [[m["context"], m["weights"] / MIB, m["kv_cache"] / MIB, m["total"] / MIB, f"{m['kv_share']:.1%}"]
            for m in s["memory"]]
    memory = Table(f"Memory at context ({spec.dtype} weights, f16 KV cache)",
                   ["context", "weights MiB", "KV MiB", "total MiB", "KV share"], rows)
    with atomic_dir(out, force=force, inputs=[model_dir]) as tmp:
        render_report(tmp / "report.html", title or f"{Path(model_dir).name}: model spec", "info", figures,
                      [memory_chart(spec)], [memory],
                      notes=["computed from config.json (analytic, no measurement)"])
        return write_record(tmp, "info", {"model": str(model_dir)}, result={"spec": s}, figures=figures)
