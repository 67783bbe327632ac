"""slm ablate: block expansion vs LoRA vs full fine-tuning vs freeze-tuning on the same data and token
budget."""

from __future__ import annotations

import json

from slm.errors import SlmError
from slm.train.ablate import AblateArgs, ablate


def register(sub) -> None:
    p = sub.add_parser("ablate", help="LLaMA Pro's ablation: expanded / LoRA / full / freeze on the same "
                                      "token budget")
    p.add_argument("recipe", help="training recipe (YAML) whose model is an `slm expand` output")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the recipe, for every run")
    p.add_argument("--budget", type=int, default=0, help="training tokens per method (default: the recipe's)")
    p.add_argument("--out", "-o", required=True, help="ablation folder (runs/<method>/, slm.json, "
                                                      "report.html)")
    p.add_argument("--base", default="", help="the original model (default: read from the expanded model's "
                                              "slm.json)")
    p.add_argument("--methods", default=",".join(("expanded", "lora", "full", "freeze")),
                   help="comma-separated")
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank (default: match the expanded run's "
                                                         "parameters)")
    p.add_argument("--freeze", choices=["copied", "top"], default="copied",
                   help="which existing layers freeze-tuning trains: the ones expand copied, or the top-most")
    p.add_argument("--domain", default="", help="held-out set of the training domain (default: heaviest "
                                                "source)")
    p.add_argument("--probe-prompts", type=int, default=80, help="held-out instruction-probe prompts")
    p.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens per set")
    p.add_argument("--lr", default="", metavar="METHOD=LR,...",
                   help="peak lr of some methods (default: each method's own, slm.train.ablate.DEFAULT_LR; "
                        "the recipe's lr is not used)")
    p.add_argument("--humaneval", choices=["loss", "pass"], default="",
                   help="HumanEval on every model: canonical-solution loss, or that and greedy pass@1")
    p.add_argument("--humaneval-problems", type=int, default=0, help="the first N problems (0 = all 164)")
    p.add_argument("--ifeval", type=int, default=0, metavar="N",
                   help="IFEval-verified probe with N prompts (IFEval's checkers, if-verifiable; 0 = off)")
    p.add_argument("--seeds", type=int, default=1, help="runs per method (data order, random init); changes "
                                                         "are means over seeds with t intervals")
    p.add_argument("--lr-grid", nargs="?", const="0.333,1,3", default="", metavar="FACTORS",
                   help="pick each method's lr from default × FACTORS (default 0.333,1,3) on a validation "
                        "split of the domain, disjoint from the reported held-out tokens")
    p.add_argument("--keep-weights", action="store_true", help="keep every run's final weights (default: "
                                                               "dropped once evaluated)")
    p.add_argument("--no-diff", action="store_true", help="skip the weight-space diagnostics")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--force", action="store_true", help="redo every run (default: finished runs are reused)")
    p.set_defaults(func=cmd_ablate, hub_models={"base": "weights"})


def parse_lrs(text: str) -> dict:
    """'full=2e-5,lora=1e-4' → {method: lr}; a value that is not a number is refused in one line."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        m, eq, v = item.partition("=")
        try:
            out[m.strip()] = float(v)
        except ValueError:
            raise SlmError(f"--lr {item!r}: use METHOD=LR, e.g. --lr full=2e-5,lora=1e-4") from None
        if not eq:
            raise SlmError(f"--lr {item!r}: use METHOD=LR, e.g. --lr full=2e-5,lora=1e-4")
    return out


def parse_grid(text: str) -> list:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SlmError(f"--lr-grid {text!r}: use comma-separated positive factors, e.g. 0.333,1,3") from None


def cmd_ablate(args) -> int:

    res = ablate(AblateArgs(recipe=args.recipe, out=args.out, overrides=list(args.overrides),
                            budget=args.budget, base=args.base, methods=args.methods.split(","),
                            lora_r=args.lora_r, freeze=args.freeze, domain=args.domain,
                            probe_prompts=args.probe_prompts, eval_tokens=args.eval_tokens,
                            humaneval=args.humaneval, humaneval_problems=args.humaneval_problems,
                            ifeval=args.ifeval, lr=parse_lrs(args.lr), lr_grid=parse_grid(args.lr_grid),
                            seeds=args.seeds,
                            keep_weights=args.keep_weights, diff=not args.no_diff, force=args.force))
    if args.json:
        print(json.dumps(res, indent=1, default=str))
        return 0
    dom, probe = res["domain"], res["probe_set"]
    for m, r in res["methods"].items():
        d, p = r["delta"][dom], r["delta"][probe]
        print(f"{m:9s} {r['tokens']:,} tokens, {r['trainable_params']:,} trainable, lr {r['lr']:.3g}: "
              f"Δ{dom} {d['change']:+.4f} ± {1.96 * d['se']:.4f}, Δprobe {p['change']:+.4f} ± "
              f"{1.96 * p['se']:.4f} (95 %), BWT {r['forgetting']['bwt']:+.4f}")
    print(f"report: {args.out}/report.html")
    return 0
