"""slm plan: which depth × quant type × KV type fits a device at a context, and its projected speed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from slm.profiling.plan import DEFAULT_TYPES, PlanArgs, run_plan
from slm.profiling.plan_choice import DEFAULT_MAX_KLD
from slm.profiling.plan_report import COLUMNS, table_rows


def register(sub) -> None:
    p = sub.add_parser("plan", help="candidates (depth, GGUF type, KV type) against a device's memory and "
                                    "speed")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("model", nargs="?", help="HF checkpoint folder or GGUF")
    src.add_argument("--config", help="a config.json (plan a model before it has weights)")
    p.add_argument("--device", required=True, help="device key, e.g. jetson-orin-nano-8gb")
    p.add_argument("--context", type=int, default=4096, help="context the model must hold (tokens)")
    p.add_argument("--min-decode", type=float, help="required decode tok/s at the context")
    p.add_argument("--min-prefill", type=float, help="required prefill tok/s")
    p.add_argument("--max-memory", type=float, help="memory budget in GB (default: the device's usable "
                                                    "memory)")
    p.add_argument("--grow", action="store_true", help="also consider LLaMA Pro expansions")
    p.add_argument("--prune", action="store_true", help="also consider depth-pruned variants")
    p.add_argument("--types", help="GGUF types considered (comma-separated)")
    p.add_argument("--quality", action="append",
                   help="slm.json of a profile sweep, export or --measure run of this model (KLD, "
                        "perplexity); repeatable")
    p.add_argument("--max-kld", type=float, default=DEFAULT_MAX_KLD,
                   help="recommend only candidates with measured mean KLD vs f16 at most this (nats; "
                        f"default {DEFAULT_MAX_KLD})")
    p.add_argument("--engine", default="llama.cpp",
                   help="whose calibration projects speed: llama.cpp (CUDA, default), mlc, or all (side by "
                        "side)")
    p.add_argument("--power-mode", default="", help="the device's nvpmodel mode, e.g. 30W (default: MAXN)")
    p.add_argument("--measure", action="store_true",
                   help="measure every candidate's quality as it runs (prune, export, quantize, score)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for --measure")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("-o", "--out", help="write plan.json, slm.json and report.html into this folder")
    p.add_argument("--top", type=int, default=15, help="rows printed")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_plan, hub_models={"model": "config"})


def cmd_plan(args) -> int:
    source = args.model or args.config
    pa = PlanArgs(device=args.device, context=args.context, min_decode=args.min_decode,
                  min_prefill=args.min_prefill, max_memory_gb=args.max_memory, grow=args.grow,
                  prune=args.prune, quality=tuple(args.quality or ()), types=args.types or DEFAULT_TYPES,
                  max_kld=args.max_kld, engine=args.engine, power_mode=args.power_mode,
                  measure=args.measure, threads=args.threads)
    result = run_plan(source, pa, Path(args.out) if args.out else None, args.force)
    if result["fallback_warning"]:
        print(result["fallback_warning"], file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if "engines" in result:
            for e, r in result["engines"].items():
                print(f"[{e}] {r['answer']}")
            print(_side_by_side(result["engines"]))
        else:
            print(result["answer"])
        print(f"candidates ({result['how']['calibration']}) {result['how']['ranking']}:")
        rows = [COLUMNS] + [[str(c) for c in r] for r in table_rows(result, args.top)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        for r in rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        print(f"* {result['how']['speed']}")
        n = sum(r["meets_budget"] for r in result["candidates"])
        print(f"{n} of {len(result['candidates'])} candidates meet the budget on {result['device']['name']}")
    if args.out:
        print(f"report: {args.out}/report.html")
    return 0


def _side_by_side(engines: dict) -> str:
    """One line per engine: its calibration's held-out error, the recommended candidate and the fastest one
    meeting the budget."""
    def cell(r):
        if r is None:
            return "none"
        return (f"{r['layers']}L {r['type']}+{r['kv_type']} {r['decode_tok_s']:.0f} tok/s "
                f"{r['memory_bytes'] / 2**20:.0f} MiB")
    rows = [["engine", "held-out error", "recommended", "fastest meeting the budget"]]
    rows += [[e, f"±{r['how']['decode_expected_error']:.0%}", cell(r["recommended"]), cell(r["fastest"])]
             for e, r in engines.items()]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(x) for c, x in zip(r, w)) for r in rows)
