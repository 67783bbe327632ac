"""The ablation's slm.json and report.html: a Pareto figure (domain gain vs instruction-probe loss rise), the
table with every figure's uncertainty, OP/BWT, each method's weight-space picture, and links to every run."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from slm.figure import Figure
from slm.record import write_record
from slm.report.render import (  # matplotlib: only when a report is written
    Chart,
    Table,
    new_figure,
    render_report,  # matplotlib: only when a report is written
    svg_of,
)
from slm.stats import Z95, ci95_se


def _pm(d: dict) -> str:
    """A loss change ± its 95 % half-width; marked when the interval holds 0 (slm.stats)."""
    return f"{d['change']:+.4f} ± {Z95 * d['se']:.4f}" + ("" if d["significant"] else " (within noise)")


def _ci(d: dict) -> str:
    return f"{d['change']:+.3f} ± {Z95 * d['se']:.3f}"


def _pct(r: dict) -> str:
    return f"{100 * r['rate']:.1f} % [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"


def pareto(points: dict) -> list[str]:
    """Methods no other beats on both axes: (forgetting x, lower better; gain y, higher better)."""
    return [m for m, (x, y) in points.items()
            if not any(x2 <= x and y2 >= y and (x2, y2) != (x, y)
                       for m2, (x2, y2) in points.items() if m2 != m)]


def headline(result: dict) -> str:
    """The reports index's first sentence: which method gained the most on the domain per unit of forgetting
    (instruction-probe loss rise), with both changes' s.e.; no winner is named from differences inside the
    noise."""
    dom, probe, methods = result["domain"], result["probe_set"], result["methods"]
    first = next(iter(methods.values()))
    tokens, k = first["tokens"], len(first.get("seeds", [0]))
    gains = {m: r["delta"][dom] for m, r in methods.items() if r["delta"][dom]["significant"]
             and r["delta"][dom]["change"] < 0}
    head = (f"LLaMA Pro ablation ({tokens:,} training tokens per method, {k} seed{'s' if k > 1 else ''}, "
            f"domain '{dom}', ± 95 %): ")
    if not gains:
        return head + "no method's domain gain is outside the noise at this budget."

    def ratio(m: str) -> tuple[float, float]:
        """Domain gain per unit of probe loss rise, with its s.e. by the delta method (first order: the
        relative errors of gain and rise add in quadrature); a rise inside the noise counts as none (infinite
        ratio)."""
        g, rise = gains[m], methods[m]["delta"][probe]
        if not (rise["significant"] and rise["change"] > 0):
            return float("inf"), 0.0
        r = -g["change"] / rise["change"]
        return r, r * math.hypot(g["se"] / g["change"], rise["se"] / rise["change"])

    ranked = sorted(gains, key=lambda m: (ratio(m)[0], -gains[m]["change"]), reverse=True)
    best, rise = ranked[0], methods[ranked[0]]["delta"][probe]
    forgot = f"instruction-probe loss {_ci(rise)}"
    if not rise["significant"]:
        others = forgetting_elsewhere(result, best)
        forgot += (", within noise; but " + ", ".join(others) if others
                   else ", within noise: no measurable forgetting")
    gain = f"domain loss {_ci(gains[best])} nats/token, {forgot}"
    (r1, s1) = ratio(best)
    if math.isfinite(r1):  # ratios whose 95 % intervals overlap the best one's
        tied = [m for m in ranked[1:] if (lambda r2, s2: r1 - Z95 * s1 <= r2 + Z95 * s2)(*ratio(m))]
    else:  # no measurable forgetting: tied with every such method whose domain gain overlaps the best one's
        g1 = gains[best]
        tied = [m for m in ranked[1:] if not math.isfinite(ratio(m)[0])
                and abs(g1["change"] - gains[m]["change"]) <= Z95 * math.hypot(g1["se"], gains[m]["se"])]
    if tied:  # the ratios' 95 % intervals overlap: no single winner
        names = [best, *tied]
        who = f"{', '.join(names[:-1])} and {names[-1]}"
        if not math.isfinite(r1):
            each = ", ".join(f"{m} {_ci(gains[m])}" for m in names)
            elsewhere = [f"{m}: {', '.join(o)}" for m in names if (o := forgetting_elsewhere(result, m))]
            what = ("no measurable forgetting" if not elsewhere else
                    f"no measurable probe-loss rise (forgetting elsewhere — {'; '.join(elsewhere)})")
            return (head + f"{who} learned the domain with {what}, gains overlapping "
                    f"(domain loss {each} nats/token); {best}: {gain}.")
        each = ", ".join(f"{m} {ratio(m)[0]:.2f} ± {Z95 * ratio(m)[1]:.2f}" for m in names)
        return (head + f"{who} gained about as much per unit of forgetting (domain gain / "
                f"probe rise: {each}, intervals overlap); {best}: {gain}.")
    return head + f"{best} gained the most per unit of forgetting: {gain}."


def forgetting_elsewhere(result: dict, m: str) -> list[str]:
    """Method m's significant losses outside the probe loss: a rise on the general set, a drop in a rate
    (IFEval-verified instructions, HumanEval pass@1), so that 'no measurable forgetting' is said only when
    there is none."""
    r, out = result["methods"][m], []
    g = r["delta"].get("general")
    if g and g["significant"] and g["change"] > 0:
        out.append(f"general loss {_ci(g)}")
    for key, measure, words in RATES:
        d = r.get("rates", {}).get(key, {}).get(measure)
        if d and d["significant"] and d["change"] < 0:
            out.append(f"{words} {100 * d['change']:+.1f} ± {100 * Z95 * d['se']:.1f} points")
    return out


# the per-prompt / per-problem rates the sentences and the table read: (set, measure, words)
RATES = (("ifeval", "prompt_strict", "IFEval-verified instructions (prompt-level strict)"),
         ("humaneval", "pass@1", "HumanEval pass@1"))


def _verdict(d: dict) -> str:
    return "" if d["significant"] else " (within noise)"


def kept(result: dict, m: str) -> list[str]:
    """What method m kept, as phrases with 95 % intervals: IFEval-verified instructions and HumanEval pass@1
    (paired rate changes), HumanEval's solution loss, the general sets and the probe (loss changes)."""
    r, dom = result["methods"][m], result["domain"]
    out = [f"{words} {100 * d['change']:+.1f} ± {100 * Z95 * d['se']:.1f} points{_verdict(d)}"
           for s, x, words in RATES if (d := r.get("rates", {}).get(s, {}).get(x))]
    names = {"humaneval": "HumanEval solution loss", result["probe_set"]: "instruction-probe loss"}
    out += [f"{names.get(s, s)} {_ci(d)}{_verdict(d)}" for s, d in r["delta"].items() if s != dom]
    return out


def method_sentences(result: dict) -> list[str]:
    """One sentence per method: its domain gain and what it kept, each ± 95 %, marked when within noise."""
    dom = result["domain"]
    return [f"{m} (lr {r['lr']:.3g}): domain '{dom}' loss {_ci(r['delta'][dom])} nats/token"
            f"{_verdict(r['delta'][dom])}; kept: {'; '.join(kept(result, m)) or 'nothing measured'}."
            for m, r in result["methods"].items()]


def index_headline(result: dict) -> str:
    """What the reports index leads with: the verdict, then one sentence per method."""
    return " ".join([headline(result), *method_sentences(result)])


def _chart(result: dict):

    dom, probe, methods = result["domain"], result["probe_set"], result["methods"]
    pts = {m: (r["delta"][probe]["change"], -r["delta"][dom]["change"]) for m, r in methods.items()}
    front = set(pareto(pts))
    fig, ax = new_figure(6.5, 4.0)
    for m, (x, y) in pts.items():
        d = methods[m]["delta"]
        ax.errorbar(x, y, xerr=Z95 * d[probe]["se"], yerr=Z95 * d[dom]["se"], fmt="o", capsize=3,
                    color="#e07a2f" if m in front else "#4a78b5")
        ax.annotate(m, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.axhline(0, color="#999", lw=0.8)
    ax.axvline(0, color="#999", lw=0.8)
    ax.set_xlabel("instruction-probe loss rise (nats/token; right = more forgetting)")
    ax.set_ylabel(f"domain loss gain on '{dom}' (nats/token; up = better)")
    ax.set_title("Domain gain vs forgetting, same data and token budget (orange: Pareto front)")
    return Chart("Domain gain vs forgetting", svg_of(fig),
                 "measured here: held-out losses of each final model against the original; bars are 95 % "
                 "(1.96 s.e.)")


def _tables(result: dict) -> list:

    dom, probe, methods = result["domain"], result["probe_set"], result["methods"]
    first = next(iter(methods.values()))
    others = [s for s in result["sets"] if s not in (dom, probe) and s in first["delta"]]
    rows, links = [], []
    for m, r in methods.items():
        how = f"r = {r['lora_r']}" if r["lora_r"] else (r["trainable"] if isinstance(r["trainable"], str)
                                                         else f"layers {r['trainable']}")
        p = r["eval"][probe]
        rates = [f"{words.split(' (')[0]} {100 * d['change']:+.1f} ± {100 * Z95 * d['se']:.1f} pts"
                 f"{_verdict(d)}" for s, x, words in RATES if (d := r.get("rates", {}).get(s, {}).get(x))]
        rows.append([m, how, r["trainable_params"], r["tokens"], f"{r['lr']:.3g}", len(r.get("seeds", [0])),
                     _pm(r["delta"][dom]),
                     "; ".join(f"{s} {_pm(r['delta'][s])}" for s in others) or "—", _pm(r["delta"][probe]),
                     "; ".join(rates) or "—", _pct(p["exact"]), _pct(p["extract"]), _pct(p["ended"])])
        links.append(f"runs/{m}/report.html")
    o = result["original"][probe]
    k = len(next(iter(methods.values())).get("seeds", [0]))
    spread = (f"mean over {k} seeds, ± t over seeds (never below the paired token interval)" if k > 1 else
              "one seed: ± the paired token interval only (seed-to-seed spread not in it; use --seeds)")
    main = Table("Methods (loss changes vs the original model, nats/token ± 95 %; negative = lower loss)",
                 ["method", "trainable", "trainable params", "tokens", "peak lr", "seeds",
                  f"Δ loss {dom} (domain)", "Δ loss other sets", "Δ probe loss", "Δ benchmark rates (paired)",
                  "probe exact [95 % CI]",
                  "answer in first line [CI]", "ends its turn [CI]"], rows, links=links,
                 note=f"{spread}; probe rates of seed 0. Original model: probe exact {_pct(o['exact'])}, in "
                      f"first line {_pct(o['extract'])}, ends its turn {_pct(o['ended'])}")
    tables = [main, _forgetting_table(result)]
    if result.get("lr_grid"):
        tables.append(_grid_table(result))
    flips = _flip_rows(result)
    if flips:
        tables.append(Table("Items that flipped against the original (per prompt or problem, each seed)",
                            ["method", "seed", "set", "measure", "lost (1→0)", "gained (0→1)", "items",
                             "McNemar p"], flips,
                            note="exact two-sided McNemar test (slm.stats); p ≥ 0.05: the flips do not show "
                                 "a change"))
    if all("diff" in r for r in methods.values()):
        tables.append(Table("Weight space against the original (slm diff, seed 0)",
                            ["method", "layers compared", "new layers", "changed layers",
                             "intruder dimensions", "largest layer change"],
                            [[m, r["diff"]["layers"] - r["diff"]["new_layers"], r["diff"]["new_layers"],
                              r["diff"]["changed_layers"], r["diff"]["intruders"],
                              r["diff"]["max_layer_change"]] for m, r in methods.items()],
                            note="intruder dimensions: Shuttleworth et al. 2024, top 10 singular vectors, "
                                 "ε = 0.5"))
    return tables


def _forgetting_table(result: dict) -> Table:
    """Per method, every set the original knew: its score change (−loss) ± 95 %, then OP/BWT beside them."""
    methods = result["methods"]
    per = next(iter(methods.values()))["forgetting"].get("per_set", {})
    sets = [s for s in result["sets"] if s in per]
    rows = [[m] + [_pm(r["forgetting"]["per_set"][s]) if s in r["forgetting"].get("per_set", {}) else "–"
                   for s in sets] + [f"{r['forgetting']['bwt']:+.4f}", f"{r['forgetting']['op']:.4f}"]
            for m, r in methods.items()]
    return Table("Forgetting per set (score = −loss change from the original, nats/token ± 95 %; negative = "
                 "forgotten), with BWT and OP beside their parts",
                 ["method"] + sets + ["BWT (their mean)", "OP"], rows,
                 note="BWT averages the sets to its left: a gain on one can hide a loss on another; OP = "
                      "mean score over every set after training (domain included)")


def _grid_table(result: dict) -> Table:
    rows = []
    for m, g in result["lr_grid"].items():
        for p in g["grid"]:
            rows.append([m, f"{p['lr']:.3g}", f"{p['val_loss']:.4f} ± {Z95 * p['val_se']:.4f}", p["tokens"],
                         "chosen" if p["lr"] == g["chosen"] else ""])
    return Table("Learning-rate grid (seed 0): validation loss on the domain's held-out tokens after the "
                 "reported ones", ["method", "peak lr", "validation loss (nats/token ± 95 %)", "tokens", ""],
                 rows,
                 note="each method's rate is the lowest validation loss of its grid (default × the grid "
                      "factors); the reported held-out tokens were never used to choose it")


def _flip_rows(result: dict) -> list:
    rows = []
    for m, r in result["methods"].items():
        for seed, fl in zip(r.get("seeds", [0]), r.get("flips", [])):
            for s, per in fl.items():
                for measure, f in per.items():
                    if measure != "ended" or f["lost"] or f["gained"]:
                        rows.append([m, seed, s, measure, f["lost"], f["gained"], f["n"], f"{f['p']:.3g}"])
    return rows


def ablation_figures(result: dict) -> list[Figure]:
    """Each method's domain gain and instruction-probe loss rise against the original, ± 95 % (paired)."""
    dom, probe, methods = result["domain"], result["probe_set"], result["methods"]
    out = []
    for m, r in methods.items():
        g, rise = r["delta"][dom], r["delta"][probe]
        out += [Figure(f"{m}.domain_gain", f"{m}: domain loss gain on '{dom}'", -g["change"], "nats/token",
                       "higher", "quality", interval=ci95_se(g["se"]), key=True, note=g["se_how"]),
                Figure(f"{m}.probe_rise", f"{m}: instruction-probe loss rise (forgetting)", rise["change"],
                       "nats/token", "lower", "forgetting", interval=ci95_se(rise["se"]), key=True,
                       note=rise["se_how"])]
        if "humaneval" in r["delta"]:
            h = r["delta"]["humaneval"]
            out.append(Figure(f"{m}.humaneval.loss_change", f"{m}: HumanEval solution loss change",
                              h["change"], "nats/token", "lower", "forgetting", interval=ci95_se(h["se"]),
                              note=h["se_how"]))
        for s, x, words in RATES:
            if d := r.get("rates", {}).get(s, {}).get(x):
                out.append(Figure(f"{m}.{s}.{x}_change", f"{m}: {words} change", d["change"], "share",
                                  "higher", "forgetting", interval=ci95_se(d["se"]), note=d["se_how"]))
    return out


def write_ablation(out: Path, args, result: dict) -> Path:
    """slm.json + report.html into the ablation folder (files written atomically; the runs stay beside
    them)."""

    dom, probe, methods = result["domain"], result["probe_set"], result["methods"]
    gain = {m: -r["delta"][dom]["change"] for m, r in methods.items()}
    rise = {m: r["delta"][probe]["change"] for m, r in methods.items()}
    figures = ablation_figures(result)
    front = pareto({m: (rise[m], gain[m]) for m in methods})
    lrs = ", ".join(f"{m} {r['lr']:.3g}" for m, r in methods.items())
    chosen = "chosen on the validation grid" if result.get("lr_grid") else "each method its own default"
    tokens = next(iter(methods.values()))["tokens"]
    lead = [headline(result), f"Same data and {tokens:,} training tokens per method; domain '{dom}'; peak lr "
            f"per method: {lrs} ({chosen}). On the Pareto front (most domain gain for least "
            f"instruction-probe loss rise): {', '.join(front)}.",
            "Every ± is a 95 % interval; a change whose interval holds 0 is marked 'within noise', and a "
            "winner is named only when its interval clears the others'."]
    lead[1:1] = method_sentences(result)
    # the reports index leads with the headline: the verdict, then one sentence per method
    result = {**result, "headline": index_headline(result)}
    write_record(out, "ablate", asdict(args), {"base": result["base"], "data": result["data"]}, result,
                 figures=figures)
    render_report(out / "report.html", "ablate: expanded vs LoRA vs full vs freeze", "ablate", figures,
                  [_chart(result)], _tables(result), lead=lead,
                  links=[(m, f"runs/{m}/report.html") for m in methods],
                  notes=[f"{k} = {v}" for k, v in asdict(args).items() if v not in ("", [], None)])
    return out
