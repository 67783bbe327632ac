"""The profile report's charts: prefill and decode speed, the KV-cache share of memory, the quantization
sweep's size / quality / speed, the roofline, and where the time goes by operator kind. Each returns a Chart
whose caption says how its points were obtained."""

from __future__ import annotations

import numpy as np

from slm.profiling.ops import KINDS
from slm.report.render import Chart, new_figure, svg_of

MIB = 2**20


def speed_fig(res: dict, kind: str) -> Chart:
    fig, ax = new_figure()
    key = "n_tokens" if kind == "prefill" else "depth"
    for name, b in res["backends"].items():
        rows = [r for r in b["rows"] if r["kind"] == kind]
        ax.errorbar([r[key] for r in rows], [r["tok_s"] for r in rows], capsize=3, marker="o",
                    yerr=[r["ci95"] if r.get("ci95") is not None else r["tok_s_std"] for r in rows],
                    label=f"{name} ({res['how']})")
        bad = [r for r in rows if r.get("disturbed")]
        if bad:
            ax.plot([r[key] for r in bad], [r["tok_s"] for r in bad], "x", color="red", ms=10, mew=2,
                    label=f"{name}: disturbed (other processes used the CPU)")
    p = res.get("projection")
    if p:
        rows = [r for r in p["rows"] if r["kind"] == kind and r["tok_s"]]
        if rows:
            ax.plot([r[key] for r in rows], [r["tok_s"] for r in rows], "s--",
                    label=f"{p['device']['name']} (projected, llama.cpp)")
    ax.set_xlabel("prompt length (tokens)" if kind == "prefill" else "context depth before decoding (tokens)")
    ax.set_ylabel("tokens / second" + (" (log scale)" if p else ""))
    if p:  # projected device figures can be orders of magnitude above the host's
        ax.set_yscale("log")
    ax.set_title("prefill speed vs prompt length" if kind == "prefill" else "decode speed vs depth")
    ax.legend(fontsize=7)
    b = res["args"]["bench"]
    how = (f"{res['how']}, {res['threads']} threads; mean ± 95 % interval over at least {b['reps']} "
           f"repetitions (repeated until within ±{b.get('target_ci', 0.03):.0%} or "
           f"{b.get('time_cap_s', 0):g} s) after {b['warmup']} warm-up (random token ids, llama-bench "
           "protocol); red ×: measured under interference")
    if res.get("runner") == "llama-bench":  # slm.profiling.llamabench: llama-bench's fixed repetitions
        how = (f"{res['how']}, {res['threads']} threads; mean ± 95 % interval (Student t) over llama-bench's "
               f"-r {b['reps']} repetitions after its own warm-up run")
    return Chart(ax.get_title(), svg_of(fig),
                  how + ("; dashed: projected (see the projection table)" if p else ""))


def kv_fig(res: dict) -> Chart:
    c = res["kv"]["analytic"]["f16"]
    x = [r["context"] for r in c["rows"]]
    fig, ax = new_figure()
    ax.stackplot(x, [r["weights"] / MIB for r in c["rows"]], [r["kv_cache"] / MIB for r in c["rows"]],
                 [r["compute"] / MIB for r in c["rows"]],
                 labels=["weights", "KV cache (f16)", "compute buffers"], alpha=0.8)
    m = [r for r in res["kv"]["measured"] if r["cache_type"] == "f16"]
    if m:
        ax.plot([r["context"] for r in m], [(r["weights"] + r["kv_cache"] + r["compute"]) / MIB for r in m],
                "ko", label="llama.cpp allocation (measured)")
    if c["crossover_within_max"]:
        ax.axvline(c["crossover_context"], color="k", ls=":",
                   label=f"KV = weights at {c['crossover_context']:,}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("memory (MiB)")
    ax.set_title("memory vs context: KV-cache share")
    ax.legend(fontsize=7, loc="upper left")
    return Chart(ax.get_title(), svg_of(fig), "analytic: 2 × layers × kv_heads × head_dim × 2 bytes per "
                  "token; weights and compute buffers as llama.cpp reports them; dots: llama.cpp's logged "
                  "allocation on this host")


def scoring_text(res: dict) -> str:
    """Which tokens the sweep's perplexity and KLD were scored over (runs before the mode was recorded:
    halves)."""
    sc = res["sweep"].get("scoring") or {}
    return sc.get("what") or f"second half of each of {res['args']['ppl_chunks']} chunks of 256 tokens"


def pareto_fig(res: dict) -> Chart:
    rows = res["sweep"]["rows"]
    fig, ax = new_figure()
    sc = ax.scatter([r["size_bytes"] / MIB for r in rows], [max(r["kld_vs_ref"], 1e-6) for r in rows],
                    c=[r["tg_tok_s"] for r in rows], cmap="viridis", s=60)
    for r in rows:
        ax.annotate(r["type"], (r["size_bytes"] / MIB, max(r["kld_vs_ref"], 1e-6)), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    fig.colorbar(sc, ax=ax, label="decode tok/s")
    ax.set_yscale("log")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel(f"KL divergence vs {rows[0]['reference']} (nats/token)")
    ax.set_title("quantization: size vs quality vs decode speed")
    return Chart(ax.get_title(), svg_of(fig), f"{res['how']}; KLD scored over the {scoring_text(res)}; "
                  f"decode tg{res['args']['sweep_tg']} @ d0")


def roofline_fig(res: dict) -> Chart:

    h = res["host"]
    bw, peak = h["bandwidth_Bps"], h["flops"]
    fig, ax = new_figure()
    ai = np.logspace(-1, 3, 100)
    ax.plot(ai, np.minimum(peak, bw * ai) / 1e9, "k-", label="roofline (this host, DRAM)")
    if h.get("bandwidth_curve") and h["bandwidth_curve"][0][1] > 1.2 * bw:  # the cache is faster than DRAM
        cbw = h["bandwidth_curve"][0][1]
        ax.plot(ai, np.minimum(peak, cbw * ai) / 1e9, "k--",
                label=f"roofline (cache-resident, {h['bandwidth_curve'][0][0] / 2**20:.0f} MiB working set)")
    for name, b in res["backends"].items():
        x = [r["arith_intensity"] for r in b["rows"] if "arith_intensity" in r]
        y = [r["attained_flops"] / 1e9 for r in b["rows"] if "attained_flops" in r]
        ax.plot(x, y, "o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs / byte of weights + KV read)")
    ax.set_ylabel("attained GFLOP/s")
    ax.set_title("roofline: every test against this host's bandwidth and matmul peak")
    ax.legend(fontsize=7)
    return Chart(ax.get_title(), svg_of(fig), f"points {res['how']}; roofline peaks: {h['how']}; FLOPs per "
                  "token = 2 × matmul weights + attention 4 × layers × heads × head_dim × context; bytes per "
                  "step = weights (+ KV so far)")


def ops_fig(res: dict) -> Chart | None:
    """Where the time goes: a stacked bar of time share by operator kind per backend × phase (slm profile
    --ops)."""

    bars = [(f"{name}\n{ph}", p["shares"]) for name, b in res["backends"].items() if b.get("ops")
            for ph, p in b["ops"]["phases"].items()]
    if not bars:
        return None
    fig, ax = new_figure()
    left = [0.0] * len(bars)
    for k in KINDS:
        w = [sh.get(k, 0.0) for _, sh in bars]
        ax.barh([lb for lb, _ in bars], w, left=left, label=k)
        for i, v in enumerate(w):
            if v >= 0.06:
                ax.text(left[i] + v / 2, i, f"{v:.0%}", ha="center", va="center", fontsize=7, color="white")
        left = [a + b for a, b in zip(left, w)]
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the operator time")
    ax.set_title("where the time goes: operator kinds per phase")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    hows = "; ".join(f"{name}: {b['ops']['how']} (prefill of {b['ops']['n_prompt']} tokens, "
                     f"{b['ops']['n_decode']} decode steps)"
                     for name, b in res["backends"].items() if b.get("ops"))
    return Chart(ax.get_title(), svg_of(fig), f"{res['how']}; {hows}. Decode's weight matmuls multiply a "
                  "matrix by one token's vector (mul_mat_vec); a diagnostic pass, slower than the timed "
                  "tests, so only shares count")
