"""The HTML report of a profile: speed vs prompt length and depth, KV share vs context, quant Pareto,
roofline."""

from __future__ import annotations

import json
from pathlib import Path

from slm.figure import Figure, text
from slm.guard import atomic_dir
from slm.profiling.figures import backend_figures, profile_figures
from slm.profiling.hostload import DISTURBED_SHARE
from slm.profiling.latency import PERCENTILES
from slm.profiling.ops import KINDS
from slm.profiling.report_charts import (
    MIB,
    kv_fig,
    ops_fig,
    pareto_fig,
    roofline_fig,
    scoring_text,
    speed_fig,
)
from slm.record import write_record
from slm.report.render import Table, fmt, render_report

# marks after a figure: measured under interference / interval wider than the target
DISTURBED, WIDE = "†", "‡"
LEGEND = (f"{DISTURBED} measured while other processes used more than {{share:.0%}} of the CPU "
          f"(interference: no conclusion drawn from it); {WIDE} 95 % interval wider than ±{{target:.0%}} of "
          "the mean when the time cap was hit; ± = 95 % interval (Student t over the repetitions, repeated "
          "until within the target or the cap)")


def _legend(res: dict) -> str:

    return LEGEND.format(share=DISTURBED_SHARE, target=res["args"]["bench"].get("target_ci", 0.03))


def pm(r: dict, key: str = "tok_s", ci_key: str = "ci95", std_key: str = "tok_s_std") -> str:
    """'mean ± 95 % half-width' with the marks; rows from schema 1 show ± std, as they were recorded."""
    ci = r.get(ci_key)
    text = f"{r[key]:.1f} ± {ci:.1f}" if ci is not None else f"{r[key]:.1f} ± {r.get(std_key) or 0:.1f} (std)"
    marks = ((DISTURBED if r.get(ci_key.replace("ci95", "disturbed")) else "")
             + (WIDE if r.get("wide") else ""))
    return text + (f" {marks}" if marks else "")


def _sweep_marks(r: dict, k: str) -> str:
    """A sweep speed (k = pp or tg) with its interval and marks."""
    wide = r.get(f"{k}_tok_s_ci95") is not None and r[f"{k}_tok_s_ci95"] / r[f"{k}_tok_s"] > 0.03
    return pm({**r, "wide": wide}, f"{k}_tok_s", f"{k}_tok_s_ci95", f"{k}_tok_s_std")


def _bound_by(r: dict) -> str | None:
    """What limits a test on the roofline: the matmul peak for prefill, the memory its working set is served
    from for decode."""
    if "roofline_tok_s" not in r:
        return None
    return "matmul peak" if r["kind"] == "prefill" else f"bandwidth ({r.get('roofline_memory', 'DRAM')})"


def _kv_quality(res: dict, notes: list[str]) -> list[Table]:
    """The KV-cache quality table; a type not measured (its head size, a failed pass) is a note instead."""
    out: list[Table] = []
    kq = (res.get("sweep") or {}).get("kv_quality") or {}
    missing = [f"{t}: {why}" for t, why in kq.get("skipped", {}).items()] + ([kq["error"]] if kq.get("error")
                                                                             else [])
    if missing:
        notes.append("KV-cache quality not measured — " + "; ".join(missing))
    if kq.get("rows"):
        out.append(Table(f"KV-cache quality ({kq['weights']} weights, vs the f16 cache)",
                            ["KV type", "perplexity ± 95 %", "KLD ± 95 %", "KLD p99", "same top token",
                             "KV MiB (llama.cpp)", "cells"],
                            [[r["kv_type"], f"{r['ppl']:.3f} ± {r['ppl_ci95'] or 0:.3f}",
                              f"{r['kld']:.4f} ± {r['kld_ci95'] or 0:.4f}", r["kld_p99"], r["top1_agree"],
                              (r["kv_bytes"] or 0) / MIB, r["kv_cells"]] for r in kq["rows"]],
                            note=f"scored over the {kq['scoring']['what']}; {kq['how']}. The KLD interval "
                                 "treats positions as independent (a lower bound)."))
    return out


def write(res: dict, out_html: Path, title: str) -> Path:
    figs, tables, notes = [], [], list(res["notes"])
    if res["backends"]:
        figs += [speed_fig(res, "prefill"), speed_fig(res, "decode")]
        figs += [roofline_fig(res)] if "bandwidth_Bps" in res["host"] else []
        for name, b in res["backends"].items():
            pr = b.get("protocol", res["args"]["bench"])
            rows = b["rows"]
            rss = f", peak RSS {b['peak_rss'] / MIB:.0f} MiB" if b.get("peak_rss") else ""
            tables.append(Table(f"{name}: measured ({b['threads']} threads, ≥ {pr['reps']} reps after "
                                f"{pr['warmup']} warm-up{rss})",
                                ["test", "tok/s ± 95 %", "reps", "other processes' CPU", "ms per run",
                                 "roofline tok/s", "bound by", "fraction of roofline", "energy J/token",
                                 "tokens per J"],
                                [[r["test"], pm(r), r.get("reps", pr["reps"]),
                                  _share(r.get("other_cpu_share")), r.get("prefill_ms"),
                                  r.get("roofline_tok_s"), _bound_by(r), r.get("roofline_fraction"),
                                  *_energy(r)]
                                 for r in rows],
                                note=f"{res['how']}. {_legend(res)}. Energy: {_energy_how(rows)}",
                                highlight=[i for i, r in enumerate(rows)
                                           if r.get("disturbed") or r.get("wide")]))
        lat = _latency_table(res)
        tables += [lat] if lat else []
        mem = _memory_table(res)
        tables += [mem] if mem else []
        ops = ops_fig(res)
        figs += [ops] if ops else []
        tables += _ops_table(res)
    figs.append(kv_fig(res))
    if res["kv"]["measured"]:
        tables.append(Table("KV cache: llama.cpp allocation vs analytic",
                            ["context", "cells", "type", "KV MiB (llama.cpp)", "KV MiB (analytic)", "error",
                             "weights MiB", "compute MiB", "RSS MiB"],
                            [[r["context"], r["cells"], r["cache_type"], r["kv_cache"] / MIB,
                              r["kv_analytic"] / MIB, f"{r['kv_rel_err']:+.2%}", r["weights"] / MIB,
                              r["compute"] / MIB, r["rss"] / MIB]
                             for r in res["kv"]["measured"]]))
    if res["kv"].get("skipped"):
        tables.append(Table("KV cache: not measured", ["type", "context", "why"],
                            [[s["cache_type"], s["context"] or "all", s["reason"]]
                             for s in res["kv"]["skipped"]]))
    if "sweep" in res:
        figs.append(pareto_fig(res))
        rows = res["sweep"]["rows"]
        tables.append(Table("quantization sweep", ["type", "MiB", "bpw", "prefill tok/s ± 95 %",
                                                   "decode tok/s ± 95 %", "decode share of roofline",
                                                   "perplexity", "KLD", "KLD p99", "tensor types"],
                            [[r["type"], r["size_bytes"] / MIB, r["bits_per_weight"], _sweep_marks(r, "pp"),
                              _sweep_marks(r, "tg"),
                              r["tg_roofline_fraction"], r["ppl"], r["kld_vs_ref"], r["kld_p99"],
                              ", ".join(f"{k}×{v}" for k, v in sorted(r["tensor_types"].items()))]
                             for r in rows],
                            note=f"perplexity and KLD scored over the {scoring_text(res)}. {_legend(res)}. "
                                 + res["sweep"]["answer"]))
    tables += _kv_quality(res, notes)
    p = res.get("projection")
    if p:
        d = p["device"]
        tables.append(Table(f"projected on {d['name']} ({d['bandwidth_GBps']} GB/s, {d['memory_gib']} GiB)",
                            ["test", "projected tok/s", "expected error", "device bound tok/s",
                             "host efficiency", "fits", "memory MiB"],
                            [[r["test"], r["tok_s"],
                              "unknown" if r.get("expected_error") is None else f"±{r['expected_error']:.0%}",
                              r["device_bound_tok_s"], r["host_efficiency"], r["fits"],
                              r["memory_needed"] / MIB]
                             for r in p["rows"]],
                            note="projected from: "
                                 + "; ".join(f"{k.replace('_', ' ')} {fmt(v)}"
                                             for k, v in p["inputs"].items())
                                 + f"; source: {d['source']}",
                            highlight=[i for i, r in enumerate(p["rows"]) if not r["fits"]]))
    figures, lead = headline(res)
    return render_report(out_html, title, "profile", figures, figs, tables, notes=notes, lead=lead)


def _memory_table(res: dict) -> Table | None:
    """llama.cpp's own memory: logged allocations, the plan's estimate, and a bare subprocess's resident
    bytes, beside this profiling process's RSS (which holds torch and every import)."""
    b = res["backends"].get("llama.cpp") or {}
    m = b.get("llama_memory")
    if not m:
        return None
    rows = [[k.replace("_", " "), m["logged"][k] / MIB, m["planned"][k] / MIB] for k in m["logged"]]
    lt, pt = sum(m["logged"].values()), sum(m["planned"].values())
    rows.append(["total", lt / MIB, pt / MIB])
    r = m.get("resident")
    note = (f"context {m['n_ctx']:,} ({m['cells']:,} f16 KV cells); logged: llama.cpp's allocation lines; "
            f"planned: slm plan's formula (weights as logged, analytic KV, plan.compute_bytes), "
            f"{(pt - lt) / lt:+.1%} vs logged")
    if r:
        note += (f"; resident: a bare subprocess (only llama.cpp loaded) peaked at "
                 f"{r['over_baseline'] / MIB:.0f} MiB over its {r['baseline_rss'] / MIB:.0f} MiB baseline "
                 f"after a {r['prompt']}-token prompt and {r['steps']} decode steps (pages never touched, "
                 "e.g. unused compute buffer, are not resident)")
    elif m.get("error"):
        note += f"; resident not measured: {m['error']}"
    note += (f"; this profiling process's peak RSS, {b['peak_rss'] / MIB:.0f} MiB, is the whole Python "
             "process (torch included), not the model")
    return Table("llama.cpp's memory (the model's, not this process's)",
                 ["part", "logged MiB", "planned MiB"], rows, note=note)


LATENCY_NOTE = ("each stream: a random prompt on an empty cache, then greedy tokens picked and fed back one "
                "by one (wall clock); TTFT = submit → first token id, ITL = between token ids,"
                " percentiles over every generated token of every stream; 'from pp/tg' = prompt /"
                " prefill tok/s + 1 / decode tok/s, the formula slm plan projects with. ")


def _latency_table(res: dict) -> Table | None:
    """TTFT and inter-token latency per backend that streamed, beside the TTFT the projection's formula
    gives from the same backend's pp/tg throughput."""
    figs = [f for f in backend_figures(res, res.get("where", "measured here")) if f.group == "latency"]
    rows = []
    for name, b in res["backends"].items():
        lat = b.get("latency")
        if not lat:
            continue
        mine = {f.name[len(name) + 1:]: f for f in figs if f.name.startswith(name + ".")}
        est = mine.get("ttft_from_throughput")
        rows.append([name, lat["prompt"], lat["tokens"], lat["reps"], text(mine["ttft"], unit=False),
                     lat["ttft_ms_p50"], *[lat["itl_ms"].get(f"p{q}") for q in PERCENTILES],
                     est.value if est else None])
    if not rows:
        return None
    return Table("Latency: time to first token and inter-token latency",
                 ["backend", "prompt tokens", "tokens streamed", "streams", "TTFT ms ± 95 %", "TTFT p50 ms",
                  "ITL p50 ms", "ITL p90 ms", "ITL p99 ms", "TTFT from pp/tg ms"], rows,
                 note=LATENCY_NOTE + _legend(res))


def _energy(r: dict) -> list:
    """J/token and tokens/J as measured, or 'not measurable here' (never a zero)."""
    if r.get("j_per_token") is None:
        return ["not measurable here"] * 2
    return [f"{r['j_per_token']:.3g}", f"{r['tok_per_j']:.3g}" if r.get("tok_per_j") else "–"]


def _energy_how(rows: list[dict]) -> str:
    """How the energy column was obtained (rails named), or why it is empty (runs before energy: not
    recorded)."""
    r = next((r for r in rows if r.get("j_per_token") is not None), rows[0] if rows else {})
    return r.get("energy_how") or "not recorded in this run"


def _ops_table(res: dict) -> list[Table]:
    """The shares behind the operator chart, with each phase's costliest nodes."""

    rows = [[name, ph, *[f"{p['shares'].get(k, 0):.1%}" for k in KINDS],
             ", ".join(f"{op} {s:.0%}" for op, s in p["top"][:3])]
            for name, b in res["backends"].items() if b.get("ops") for ph, p in b["ops"]["phases"].items()]
    return [Table("where the time goes: share of operator time",
                  ["backend", "phase", *KINDS, "costliest ops"], rows,
                  note="slm profile --ops: a separate diagnostic pass after the timed tests (see the chart's "
                       "caption)")] \
        if rows else []


def _share(v) -> str:
    return "–" if v is None else f"{v:.0%}"


TOP = ("threads", "device.fingerprint", "host.bandwidth", "host.matmul", "kv.bytes_per_token", "kv.crossover",
       "device", "projected.flagged")


def headline(res: dict) -> tuple[list[Figure], list[str]]:
    """The figures shown at the top (the settings, the host, the KV cache, the key speeds) and the sentences
    above them: the measurement conditions and the sweep's worded answer."""
    figs = profile_figures(res)
    top = [f for f in figs if f.name in TOP or f.key]
    lead = []
    rows = [r for be in res["backends"].values() for r in be["rows"]]
    if rows and all(r.get("other_cpu_share", 0) is None for r in rows):
        lead.append("Measurement conditions: other processes' CPU use was not sampled on the device (the "
                    "device's own llama-bench ran the tests): check it was otherwise idle.")
    elif rows and "disturbed" in rows[0]:
        n = sum(1 for r in rows if r["disturbed"])
        # the sweep's timings are other windows of the same run: counted apart, so both lines agree
        sw = [r.get(k + "_disturbed") for r in (res.get("sweep") or {}).get("rows", []) for k in ("pp", "tg")]
        m = sum(1 for d in sw if d)
        also = (f"; the quantization sweep's timings: {m} of {len(sw)} under interference" if m else
                f"; the quantization sweep's {len(sw)} timings quiet too" if sw else "")
        lead.append(f"Measurement conditions: {n} of {len(rows)} tests measured under interference "
                    f"({DISTURBED}){also}: measure again on a quiet machine before drawing conclusions."
                    if n or m else
                    f"Measurement conditions: quiet — no test saw other processes take CPU ({len(rows)} "
                    f"tests{also}).")
    if "sweep" in res:
        lead.append("Does a lower bit-width always run faster here? " + res["sweep"]["answer"])
    return top, lead


def save(res: dict, out: Path, args: dict, model: str | None, force: bool = False) -> Path:
    """profile.json + slm.json + index.html, written into a temp folder renamed into place."""


    args = {k: v for k, v in args.items() if k != "func"}
    with atomic_dir(out, force) as tmp:
        (tmp / "profile.json").write_text(json.dumps(res, indent=1, default=str))
        inputs = {"model": model} if model and Path(model).exists() and not Path(model).is_dir() else {}
        write_record(tmp, "profile", args, inputs=inputs, result=res, figures=profile_figures(res))
        write(res, tmp / "index.html", f"profile: {Path(model or 'config').name}")
    return Path(out)
