"""A model's spec as an output folder: `report.html` (key figures, memory against context) and `slm.json`.

What `slm info` prints, kept as a run that `slm report index` and `slm report compare` can read. Analytic
only: everything comes from config.json through ModelSpec, nothing is measured.
"""

from __future__ import annotations

from pathlib import Path

from slm.figure import analytic
from slm.gguf_mix import fallbacks_for
from slm.guard import atomic_dir
from slm.record import write_record
from slm.report.render import Chart, Table, new_figure, render_report, svg_of
from slm.spec import ModelSpec, load_spec

MIB = 2**20


# The GGUF types the memory chart draws the weights at beside the stored dtype: the export's defaults
# (README: `slm export --gguf q8_0,q6_k,q4_k_m`), the extremes of what is shipped to a device.
DEPLOY_TYPES = ("f16", "q8_0", "q4_k_m")


def weights_by_type(spec: ModelSpec) -> dict[str, int]:
    """Weight bytes as stored and as each DEPLOY_TYPES GGUF would hold them on this shape (llama.cpp's
    fallbacks included, predicted by slm.gguf_mix)."""
    out = {f"{spec.dtype} (as stored)": spec.weight_bytes()}
    for t in DEPLOY_TYPES:
        out[f"GGUF {t}"] = fallbacks_for(spec, t)["tensor_bytes"]
    return out


def crossovers(spec: ModelSpec) -> dict[str, int]:
    """Per weights entry of weights_by_type: the context at which the f16 KV cache becomes as large."""
    per_token = spec.kv_bytes_per_token(2)
    return {k: int(w // per_token) + 1 for k, w in weights_by_type(spec).items()}


def memory_chart(spec: ModelSpec) -> Chart:
    """The f16 KV cache against context (log scale) beside the weights as stored and at the GGUF types a
    device gets, each crossing marked: where a long context, not the model, decides the memory. The context
    axis runs past the model's maximum when a crossing lies beyond it (that stretch is greyed)."""
    weights, cross = weights_by_type(spec), crossovers(spec)
    hi = max(spec.max_context, 1024, min(max(cross.values()), 4 * spec.max_context))
    ctx = sorted({int(2 ** (k / 8)) for k in range(64, 400) if 2 ** (k / 8) <= hi} | {hi})
    per_token = spec.kv_bytes_per_token(2)
    fig, ax = new_figure(7.5, 3.8)
    ax.fill_between(ctx, [per_token * c / MIB for c in ctx], color="#e67e22", alpha=0.45,
                    label="KV cache (f16)")
    colors = ["#34495e", "#2980b9", "#16a085", "#8e44ad"]
    for (name, w), col in zip(weights.items(), colors):
        ax.axhline(w / MIB, color=col, lw=1.2, ls="--", label=f"weights {name}: {w / MIB:,.0f} MiB")
        if cross[name] <= hi:
            ax.plot([cross[name]], [w / MIB], "o", color=col, ms=5)
            ax.annotate(f"{cross[name]:,}", (cross[name], w / MIB), textcoords="offset points",
                        xytext=(-4, 5), ha="right", fontsize=7, color=col)
    if hi > spec.max_context:
        ax.axvspan(spec.max_context, hi, color="0.85", alpha=0.6, lw=0,
                   label=f"beyond max context ({spec.max_context:,})")
    ax.set_xscale("log", base=2)
    ax.set_xlim(ctx[0], hi)
    ax.set_ylim(0, 1.15 * max(max(weights.values()), per_token * hi) / MIB)
    ax.set_xlabel("context (tokens, log scale)")
    ax.set_ylabel("memory (MiB)")
    share = ax.twinx()
    q4 = weights["GGUF q4_k_m"]
    share.plot(ctx, [100 * per_token * c / (per_token * c + q4) for c in ctx], color="#c0392b", lw=1.2,
               label="KV share beside q4_k_m weights (right)")
    share.set_ylabel("KV-cache share of memory (%)")
    share.set_ylim(0, 100)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = share.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    ax.set_title("Memory against context: where the KV cache outgrows the weights")
    return Chart("Memory against context", svg_of(fig),
                 "analytic, from config.json: KV cache = 2 × layers × KV heads × head_dim × 2 bytes (f16) "
                 "per token × context; weights = parameters × bytes of the stored dtype, and for each GGUF "
                 "type the tensor bytes llama.cpp's quantizer writes on this shape (its fallbacks predicted"
                 " by slm.gguf_mix); dots: the context where the KV cache equals those weights; no compute "
                 "buffers (see slm plan)")


def write_info(model_dir: Path | str, out: Path | str, force: bool = False, title: str | None = None) -> dict:
    """Write `out`/report.html and `out`/slm.json (kind "info") for the model in `model_dir`; returns the
    record. An existing `out` is refused unless `force`. `title` defaults to "<folder name>: model spec"."""
    spec = load_spec(model_dir)
    s = spec.summary()
    cross = crossovers(spec)
    figures = spec.figures("") + [
        analytic("kv_crossover_q4_k_m", "context where the f16 KV cache outgrows q4_k_m weights",
                 cross["GGUF q4_k_m"], "tokens", "higher", "memory", key=True)]
    rows = [[m["context"], m["weights"] / MIB, m["kv_cache"] / MIB, m["total"] / MIB, f"{m['kv_share']:.1%}"]
            for m in s["memory"]]
    memory = Table(f"Memory at context ({spec.dtype} weights, f16 KV cache)",
                   ["context", "weights MiB", "KV MiB", "total MiB", "KV share"], rows)
    w = weights_by_type(spec)
    crossing = Table("Where the f16 KV cache outgrows the weights", ["weights", "MiB", "context (tokens)",
                                                                     "within max context"],
                     [[k, w[k] / MIB, c, c <= spec.max_context] for k, c in cross.items()],
                     note=f"max context {spec.max_context:,} tokens (config.json); GGUF sizes as llama.cpp "
                          "writes them on this shape")
    with atomic_dir(out, force=force, inputs=[model_dir]) as tmp:
        render_report(tmp / "report.html", title or f"{Path(model_dir).name}: model spec", "info", figures,
                      [memory_chart(spec)], [memory, crossing],
                      notes=["computed from config.json (analytic, no measurement)"])
        result = {"spec": s, "weights_by_type": w, "kv_crossover": cross}
        return write_record(tmp, "info", {"model": str(model_dir)}, result=result, figures=figures)
