"""`slm plan`'s outputs: plan.json, slm.json (the plan's figures) and report.html (speed against memory, the
ranked table)."""

from __future__ import annotations

import json
from pathlib import Path

from slm.figure import Figure, analytic, setting
from slm.guard import atomic_dir
from slm.record import atomic_write_text, write_record
from slm.report.render import Chart, Table, new_figure, render_report, svg_of


def table_rows(result: dict, n: int | None = None) -> list[list]:
    """The ranked table as printed and rendered."""
    def mib(b):
        return round(b / 2**20, 1)

    best = result.get("recommended")
    return [[i + 1, r["layers"], r["variant"], r["type"], r["kv_type"], round(r["bits_per_weight"], 2),
             mib(r["file_bytes"]), mib(r["memory_bytes"]), "yes" if r["fits"] else "no",
             round(r["decode_tok_s"], 1), round(r["prefill_tok_s"]),
             round(r["ttft_s"] * 1000), _kld(r), r.get("quality_how", ""),
             "yes" if r["meets_budget"] else "no", "*" if r["pareto"] else "",
             "★" if best is not None and _same(r, best) else ""]
            for i, r in enumerate(result["candidates"][:n])]


def _kld(r: dict) -> str:
    if r["kld"] is None:
        return "unknown"
    return f"{r['kld']:.4f}" + (f" ± {r['kld_ci95']:.4f}" if r.get("kld_ci95") else "")


def _same(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("layers", "variant", "type", "kv_type"))


COLUMNS = ["rank", "layers", "variant", "type", "KV", "bits/w", "file MiB", "memory MiB", "fits",
           "decode tok/s*", "prefill tok/s*", "TTFT ms*", "KLD vs f16", "quality", "meets budget", "Pareto",
           ""]


def plan_figures(result: dict) -> list[Figure]:
    """The plan's figures: what was asked, how many candidates meet it, and the first-ranked one's projected
    speed and memory."""
    rows = result["candidates"]
    err = result["how"]["decode_expected_error"]
    out = [setting("device", "device", result["device"]["name"]),
           setting("context", "context", result["context"], "tokens"),
           setting("types_that_hold", "GGUF types that keep their bits on this shape",
                   ", ".join(result["types_that_hold"])),
           analytic("candidates", "candidates", len(rows), "candidates"),
           Figure("meet_budget", "candidates meeting the budget", sum(r["meets_budget"] for r in rows),
                  "candidates", "higher", "model", "projected", exact=True, key=True)]
    best = result.get("recommended")
    out.append(setting("rule", "how the recommendation is chosen", result["rule"]))
    if best:
        name = f"{best['layers']} layers {best['type']} + {best['kv_type']} KV"
        out += [setting("first", "recommended", name),
                Figure("first.kld", f"{name}: KLD vs the f16 model", best["kld"], "nats/token", "lower",
                       "quality", "measured here", interval=best.get("kld_ci95"), key=True,
                       source=best["quality_source"], note=best["quality_how"]),
                Figure("first.decode", f"{name}: decode at {result['context']} tokens",
                       round(best["decode_tok_s"], 1),
                       "tok/s", "higher", "speed", "projected", expected_error=err, key=True,
                       source=result["how"]["calibration"]),
                Figure("first.memory", f"{name}: memory at the context", best["memory_bytes"], "bytes",
                       "lower",
                       "memory", "projected", exact=True, key=True)]
    return out


def _cell(r: dict | None) -> str:
    if r is None:
        return "none"
    return (f"{r['layers']} layers {r['type']} + {r['kv_type']} KV: {r['decode_tok_s']:.0f} tok/s, "
            f"{r['memory_bytes'] / 2**20:.0f} MiB")


def write_plan(out: Path, result: dict, force: bool = False, inputs: tuple = ()) -> Path:
    """out/plan.json, slm.json and report.html (speed vs size chart, ranked table), through the output
    guard."""
    rows = result["candidates"]
    with atomic_dir(out, force, [p for p in inputs if p]) as tmp:
        atomic_write_text(tmp / "plan.json", json.dumps(result, indent=2))
        fig, ax = new_figure(7.5, 3.6)
        for ok, color, label in ((True, "#2f8f4e", "meets budget"), (False, "#b0b0b0", "misses budget")):
            sel = [r for r in rows if r["meets_budget"] == ok]
            ax.scatter([r["memory_bytes"] / 2**20 for r in sel], [r["decode_tok_s"] for r in sel], s=14,
                       c=color, label=label)
        ax.axvline(rows[0]["budget_bytes"] / 2**20, color="#c0392b", lw=1, ls="--", label="memory budget")
        for r in rows:
            if r["pareto"]:
                ax.scatter([r["memory_bytes"] / 2**20], [r["decode_tok_s"]], s=40, facecolors="none",
                           edgecolors="#1f5f99", lw=1)
        best = result.get("recommended")
        if best:
            ax.scatter([best["memory_bytes"] / 2**20], [best["decode_tok_s"]], s=140, marker="*", c="#c0392b",
                       label="recommended", zorder=3)
        ax.scatter([], [], s=40, facecolors="none", edgecolors="#1f5f99", label="Pareto (measured quality)")
        from matplotlib.ticker import NullFormatter, ScalarFormatter  # deferred: matplotlib only for a report

        ax.set_xscale("log")  # candidates from a few hundred MiB to the budget's GiB stay apart
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("memory at the context (MiB, log scale)")
        ax.set_ylabel("decode tok/s (projected)")
        ax.set_title(f"{result['device']['name']} at {result['context']} tokens")
        ax.legend(fontsize=8)
        figures = plan_figures(result)
        notes = [result["how"]["speed"], result["how"]["memory"], "quality: " + result["how"]["quality"],
                 "power mode: " + result["how"]["power_mode"],
                 "* speeds are projected, never measured"] + ([result["fallback_warning"]]
                                                              if result["fallback_warning"] else [])
        write_record(tmp, "plan", result["args"],
                     inputs={"model": inputs[0]} if inputs and inputs[0] else None,
                     result={**{k: v for k, v in result.items() if k != "candidates"},
                             "headline": result["answer"]}, figures=figures)
        m = Path(result["model"])
        # a run's final/ says nothing alone
        name = f"{m.parent.name}/{m.name}" if m.name == "final" else m.name
        each = result.get("engines") or {}
        engines = [Table("Engines side by side",
                         ["engine", "calibration", "recommended", "fastest meeting the budget", "answer"],
                         [[e, r["how"]["calibration"], _cell(r["recommended"]), _cell(r["fastest"]),
                           r["answer"]] for e, r in each.items()])] if each else []
        ranked = Table(f"Candidates ({result['how']['ranking']})", COLUMNS, table_rows(result),
                       note="★ recommended. Pareto: on the three-axis front (KLD, decode, memory) of the "
                            "candidates whose quality is measured",
                       highlight=[i for i, r in enumerate(rows) if r["meets_budget"]])
        render_report(tmp / "report.html", f"plan: {name or 'config'} on {result['device']['key']}",
                      "plan", figures, [Chart("Speed vs memory", svg_of(fig), result["how"]["speed"])],
                      engines + [ranked], notes=notes, lead=[result["answer"]])
    return out
