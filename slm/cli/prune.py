"""slm prune: remove the blocks that change the hidden states least (ShortGPT block influence)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("prune", help="depth pruning: drop the K blocks of lowest block influence (ShortGPT)")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--drop", "-K", type=int, required=True, help="blocks to remove")
    p.add_argument("--by", default="block-influence", help="ranking (block-influence: 1 − cos(block in, "
                                                           "block out))")
    p.add_argument("--data", help="held-out text file (default: built-in held-out prose)")
    p.add_argument("--tokens", type=int, default=4096, help="held-out tokens scored")
    p.add_argument("--seq-len", type=int, default=256, help="window length")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="output dtype (default: keep)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_prune, hub_models={"model": "weights"})


def cmd_prune(args) -> int:
    from slm.surgery.prune import PruneArgs, prune  # torch: deferred, a heavy import

    res = prune(args.model, args.out,
                PruneArgs(drop=args.drop, by=args.by, data=args.data, tokens=args.tokens,
                          seq_len=args.seq_len, dtype=args.dtype, force=args.force))
    n, h = res["num_layers"], res["heldout"]
    print(f"{n['before']} → {n['after']} layers, dropped {res['dropped_layers']} → {args.out}")
    print(f"held-out perplexity ({h['tokens']} tokens): {h['perplexity_before']:.3f} → "
          f"{h['perplexity_after']:.3f}")
    print(f"report: {args.out}/report.html")
    return 0
