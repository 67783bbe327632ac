"""The LLaMA Pro experiment at small scale, on any machine: SmolLM2-135M expanded 30→36, CPT on the Python
standard library's sources, held-out code vs general English (pydoc_data's language-reference prose), and the
same budget with trainable=full and lora on the original model. One comparison report.

    .venv/bin/python benchmarks/exp_cpt_stdlib.py --out reports/cpt-stdlib [--steps 150 --seq-len 256]

Prints a table: perplexity before/after on code and general, OP and BWT (score = −loss), tok/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sysconfig
from pathlib import Path

COLUMNS = ["run", "trainable params", "code ppl before", "code ppl after", "general (pydoc) ppl before",
           "general (pydoc) ppl after", "english (licenses) ppl before", "english ppl after", "OP (−nats)",
           "BWT (nats)", "tok/s"]


def main() -> None:
    a = _args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    base, x36, data, prep = _inputs(a, work)
    results, curves = _runs(a, work, base, x36, data)
    english = _english(a, work, base, results)
    rows, summary = _table(results, english)
    _report(a, prep, rows, summary, curves)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="reports/cpt-stdlib")
    ap.add_argument("--work", default="/tmp/slm-cpt-stdlib", help="models, data and runs")
    ap.add_argument("--base", help="HF folder of SmolLM2-135M (default: imported from the bundled GGUF)")
    ap.add_argument("--expanded", help="its 30→36 expansion (default: made with slm expand, N=6, P=1)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3, help="expanded/LoRA lr (full: lr / 10)")
    ap.add_argument("--files", type=int, default=600)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--runs", default="expanded,full,lora")
    ap.add_argument("--report-only", action="store_true",
                    help="assemble the report from finished runs in --work")
    return ap.parse_args()


def _inputs(a, work: Path):
    """The base model, its 30→36 expansion and the prepared stdlib corpus (each made once, then reused)."""
    from slm.corpus import stdlib_corpus
    from slm.gguf_import import import_gguf
    from slm.surgery.expand import ExpandArgs, expand
    from slm.train.data import DataArgs, Source, prepare

    base = Path(a.base) if a.base else work / "smol-hf"
    if not a.base and not base.exists():
        import_gguf(None, base)
    x36 = Path(a.expanded) if a.expanded else work / "smol-x36"
    if not a.expanded and not x36.exists():
        expand(base, x36, ExpandArgs(groups=6, copies=1))
    code, general = stdlib_corpus(work, a.files)  # the same corpus as `slm demo`
    data = work / "data"
    # up to date (no work) when the corpus is unchanged
    prep = prepare(DataArgs([Source("code", str(code)),
                             Source("general", str(general), weight=0.0, heldout=1.0)],
                            str(base), heldout=0.05, force=True, workers=2), data)
    print(json.dumps({k: {x: v[x] for x in ("train_tokens", "heldout_tokens")}
                      for k, v in prep["sources"].items()}))
    return base, x36, data, prep


def _curves(run: Path) -> tuple[list, list]:
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in steps if "loss" in x], [x for x in steps if "eval" in x]


def _runs(a, work: Path, base: Path, x36: Path, data: Path) -> tuple[dict, dict]:
    """Train each kind on the same budget (or, with --report-only, read the finished runs)."""
    from slm.record import read_record
    from slm.train.args import load_recipe
    from slm.train.loop import train

    results, curves = {}, {}
    for kind in a.runs.split(","):
        run = work / f"run-{kind}"
        if a.report_only:
            results[kind], curves[kind] = read_record(run)["result"], _curves(run)
            continue
        model = x36 if kind == "expanded" else base
        lr = a.lr / 10 if kind == "full" else a.lr
        args = load_recipe(None, [
            "preset=cpt", f"model={model}", f"data={data}", f"out={run}", f"trainable={kind}",
            f"steps={a.steps}", f"seq_len={a.seq_len}", f"global_batch={a.batch}", f"micro_batch={a.batch}",
            f"lr={lr}", f"eval_tokens={a.eval_tokens}", "eval_every=0",
            "keep_last=1", "force=true"])
        results[kind] = train(args)
        curves[kind] = _curves(Path(results[kind]["out"]))
    return results, curves


def _english(a, work: Path, base: Path, results: dict) -> dict:
    """A second general set that is not about Python: the license texts that ship with the OS (English legal
    prose), evaluated on the base model and on every run's final model."""
    lic = Path("/usr/share/common-licenses")
    if not lic.is_dir():
        return {}
    from slm.train.data import DataArgs, Source, prepare
    from slm.train.evaluate import EvalArgs, evaluate

    edata = work / "data-english"
    prepare(DataArgs([Source("english", str(lic), heldout=1.0)], str(base), workers=1, force=True), edata)
    ev = evaluate(EvalArgs(models=[str(base)] + [r["model"] for r in results.values()], data=str(edata),
                           seq_len=a.seq_len, tokens=a.eval_tokens, micro_batch=4))
    english = {"base": ev["matrix"][0]["english"]["ppl"]}
    english.update({k: ev["matrix"][i + 1]["english"]["ppl"] for i, k in enumerate(results)})
    return english


def _table(results: dict, english: dict) -> tuple[list, dict]:
    """One row per run (and the printed table): perplexity before/after, OP/BWT, tok/s."""
    from slm.figure import Figure
    from slm.train.evaluate import forgetting

    rows, summary = [], []
    print(f"\n{'run':10} {'params':>10} {'code ppl':>17} {'general ppl':>17} {'OP':>8} {'BWT':>8} "
          f"{'tok/s':>7}")
    for kind, res in results.items():
        ev0, ev1 = res["evals"][0]["eval"], res["evals"][-1]["eval"]
        # stage 0 = the base model (its task: general English); stage 1 = after CPT (task: code)
        f = forgetting([{k: -ev0[k]["loss"] for k in ev0}, {k: -ev1[k]["loss"] for k in ev1}],
                       ["general", "code"])
        s = {f.name: f.value for f in res["figures"]}
        rows.append([kind, s["trainable_params"], ev0["code"]["ppl"], ev1["code"]["ppl"],
                     ev0["general"]["ppl"], ev1["general"]["ppl"], english.get("base"), english.get(kind),
                     f["op"], f["bwt"], s["tok_s"]])
        summary += [Figure(f"{kind}.code.ppl", f"{kind}: code perplexity", ev1["code"]["ppl"], "1", "lower",
                           "quality", exact=True),
                    Figure(f"{kind}.general.ppl", f"{kind}: general perplexity", ev1["general"]["ppl"], "1",
                           "lower", "quality", exact=True),
                    Figure(f"{kind}.bwt", f"{kind}: BWT", f["bwt"], "nats/token", "higher", "forgetting",
                           exact=True)]
        if english:
            summary.append(Figure(f"{kind}.english.ppl", f"{kind}: english (licenses) perplexity",
                                  english[kind], "1", "lower", "quality", exact=True))
        print(f"{kind:10} {s['trainable_params']:>10,} {ev0['code']['ppl']:>7.3f} → "
              f"{ev1['code']['ppl']:<7.3f} {ev0['general']['ppl']:>7.3f} → {ev1['general']['ppl']:<7.3f} "
              f"{f['op']:>8.4f} {f['bwt']:>+8.4f} {s['tok_s']:>7.0f}  "
              f"english {english.get('base', 0):.3f} → {english.get(kind, 0):.3f}")
    return rows, summary


def _report(a, prep: dict, rows: list, summary: list, curves: dict) -> None:
    from slm.train.report import write_comparison_report

    notes = [f"corpus: {prep['sources']['code']['train_tokens']:,} code training tokens from the Python "
             f"{sysconfig.get_python_version()} standard library (no tests, no site-packages); "
             "general held-out = pydoc_data.topics prose "
             f"({prep['sources']['general']['heldout_tokens']:,} held-out tokens), never trained on",
             f"budget per run: {a.steps} steps × {a.batch} × {a.seq_len} tokens, "
             f"cosine lr with 6 % warm-up; lr {a.lr} for expanded and LoRA, {a.lr / 10} for full "
             "(full fine-tuning diverges at higher lr)",
             "expanded = SmolLM2-135M expanded 30→36 (LLaMA Pro, N=6, P=1), only the 6 new blocks train; "
             "full and LoRA (r=16, all linear layers) start from the original 30-layer model",
             "english = /usr/share/common-licenses (GPL, Apache, BSD… texts): general English prose "
             "unrelated to Python, held out entirely, evaluated after training on the base and final models",
             f"threads: {os.environ.get('OMP_NUM_THREADS', 'torch default')}; CPU fp32"]
    out = Path(a.out)
    write_comparison_report(out / "index.html", "CPT on Python stdlib: block expansion vs full vs LoRA",
                            runs=curves, forgetting_rows=rows, figures=summary, notes=notes, columns=COLUMNS)
    (out / "results.json").write_text(json.dumps({"rows": rows, "notes": notes}, indent=1, default=str))
    print(f"report: {out / 'index.html'}")


if __name__ == "__main__":
    main()
