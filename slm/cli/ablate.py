"""slm ablate: block expansion vs LoRA vs full fine-tuning vs freeze-tuning on the same data and token
budget."""

from __future__ import annotations

import json

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
    p.add_argument("--no-diff", action="store_true", help="skip the weight-space diagnostics")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--force", action="store_true", help="redo every run (default: finished runs are reused)")
    p.set_defaults(func=cmd_ablate, hub_models={"base": "weights"})


def cmd_ablate(args) -> int:

    res = ablate(AblateArgs(recipe=args.recipe, out=args.out, overrides=list(args.overrides),
                            budget=args.budget, base=args.base, methods=args.methods.split(","),
                            lora_r=args.lora_r, freeze=args.freeze, domain=args.domain,
                            probe_prompts=args.probe_prompts, eval_tokens=args.eval_tokens,
                            diff=not args.no_diff, force=args.force))
    if args.json:
        print(json.dumps(res, indent=1, default=str))
        return 0
    dom, probe = res["domain"], res["probe_set"]
    for m, r in res["methods"].items():
        d, p = r["delta"][dom], r["delta"][probe]
        print(f"{m:9s} {r['tokens']:,} tokens, {r['trainable_params']:,} trainable: Δ{dom} "
              f"{d['change']:+.4f} ± {d['se']:.4f}, Δprobe {p['change']:+.4f} ± {p['se']:.4f}, BWT "
              f"{r['forgetting']['bwt']:+.4f}")
    print(f"report: {args.out}/report.html")
    return 0
