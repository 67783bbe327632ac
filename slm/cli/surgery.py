"""slm expand, slm upscale, slm merge."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("expand", help="LLaMA Pro block expansion: identity copies above each group of blocks")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--groups", "-N", type=int, required=True, help="N groups (must divide the layer count)")
    p.add_argument("--copies", "-P", type=int, default=1, help="top P blocks of each group copied above it")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="output dtype (default: keep)")
    p.add_argument("--no-parity", action="store_true", help="skip the fp32 logits check against the original")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_expand, hub_models={"model": "weights"})

    p = sub.add_parser("upscale", help="SOLAR depth up-scaling: 2(n−m) layers, or an explicit --slices stack")
    p.add_argument("model")
    p.add_argument("out")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--drop", "-m", type=int, help="layers dropped at each copy's seam")
    g.add_argument("--slices", help='explicit stack of source ranges, e.g. "0:24,8:32"')
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_upscale, hub_models={"model": "weights"})

    p = sub.add_parser("merge", help="linear / slerp / task arithmetic / instruction residual from a YAML "
                                     "recipe")
    p.add_argument("recipe", help="merge recipe (YAML)")
    p.add_argument("out")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_merge)


def cmd_expand(args) -> int:
    from slm.surgery.expand import ExpandArgs, expand  # torch: deferred, a heavy import

    res = expand(args.model, args.out, ExpandArgs(groups=args.groups, copies=args.copies, dtype=args.dtype,
                                                  parity=not args.no_parity, force=args.force))
    _print_result(args.out, res)
    return 0


def cmd_upscale(args) -> int:
    from slm.surgery.upscale import UpscaleArgs, upscale  # torch: deferred, a heavy import

    res = upscale(args.model, args.out,
                  UpscaleArgs(drop=args.drop, slices=args.slices, dtype=args.dtype, force=args.force))
    _print_result(args.out, res)
    return 0


def cmd_merge(args) -> int:
    from slm.surgery.merge import load_recipe, merge  # torch: deferred, a heavy import

    recipe = load_recipe(args.recipe, args.overrides)
    res = merge(recipe, args.out, force=args.force)
    print(f"merged ({recipe.method}) → {args.out}: {res['tensors']} tensors; report {args.out}/report.html")
    return 0


def _print_result(out, res: dict) -> None:
    n = res["num_layers"]
    print(f"{n['before']} → {n['after']} layers, new layers {res['record']['new_layers']} → {out}")
    if "parity" in res:
        p = res["parity"]
        print(f"parity (fp32 logits, {p['prompts']} prompts): max |Δ| = {p['max_abs_diff']:.3g}, "
              f"bit-identical: {p['bit_identical']}")
    print(f"report: {out}/report.html")
