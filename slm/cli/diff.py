"""slm diff: weight-space diagnostics of a tuned model against its source."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("diff", help="per-layer relative weight change and intruder dimensions against the "
                                    "source")
    p.add_argument("model", help="the tuned (or grown) model")
    p.add_argument("source", help="the model it came from (the original one when depths differ)")
    p.add_argument("-k", type=int, default=10, help="top singular vectors of each tuned matrix examined "
                                                    "(paper: 10)")
    p.add_argument("--epsilon", type=float, default=0.5, help="intruder below this best |cos| (paper: 0.5)")
    p.add_argument("--reference", type=int, default=0, help="source singular vectors compared against (0 = "
                                                            "all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-o", "--out", help="write slm.json + report.html here")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_diff, hub_models={"model": "weights", "source": "weights"})


def cmd_diff(args) -> int:
    from slm.surgery.diff import DiffArgs, run_diff  # torch: deferred, a heavy import

    res = run_diff(args.model, args.source,
                   DiffArgs(k=args.k, epsilon=args.epsilon, reference=args.reference),
                   args.out, args.force)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    for r in res["layers"]:
        if r["source"] is None:
            print(f"layer {r['layer']:3d}: new (no source)")
        else:
            print(f"layer {r['layer']:3d} ← {r['source']:3d}: change {r['rel_change']:.3e}, intruders "
                  f"{r['intruders']}")
    s = res["totals"]
    print(f"{s['layers']} layers ({s['new_layers']} new): {s['changed_layers']} changed, {s['intruders']} "
          f"intruder dimensions (top {args.k}, ε {args.epsilon}), largest layer change "
          f"{s['max_layer_change']:.3e}")
    if args.out:
        print(f"report: {args.out}/report.html")
    return 0
