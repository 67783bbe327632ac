"""slm export."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("export", help="GGUF (any llama.cpp type) and ONNX exports, validated against the "
                                      "model")
    p.add_argument("model", help="HF checkpoint folder")
    p.add_argument("--gguf", help="comma-separated GGUF types, e.g. q8_0,q6_k,q4_k_m (also f32, f16, bf16); "
                                  "default q8_0 unless only --onnx is given")
    p.add_argument("--onnx", default="", help="comma-separated ONNX precisions: int4 (searches recipes on "
                                              "KLD and speed, within q4_k_m's size), int4:all, "
                                              "int4:NAME (e.g. int4:hqq), int8, fp16, fp32")
    p.add_argument("--int4-rule", default="balanced",
                   help="which searched int4 recipe is kept: balanced (lowest KLD within 10 %% of the"
                        " fastest decode; default), quality (lowest KLD), speed (fastest decode)")
    p.add_argument("--ep", default="cpu", choices=["cpu", "cuda"], help="ONNX execution provider")
    p.add_argument("-o", "--out", help="output folder (default: <model>-export beside the model)")
    p.add_argument("--no-validate", action="store_true", help="skip the comparison with the HF model")
    p.add_argument("--imatrix", metavar="TEXT", help="calibration text file for an importance matrix")
    p.add_argument("--pre-tokenizer", help="llama.cpp pre-tokenizer name when detection fails (e.g. "
                                           "llama-bpe)")
    p.add_argument("--eval-text", help="held-out text file for perplexity / KL divergence")
    p.add_argument("--threads", type=int, help="CPU threads for llama.cpp (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_export, hub_models={"model": "weights"})


def cmd_export(args) -> int:
    from slm.quant.export import ExportArgs, default_out, export  # torch: deferred, a heavy import

    out = args.out or default_out(args.model)
    gguf = args.gguf if args.gguf is not None else ("" if args.onnx else "q8_0")
    res = export(args.model, out,
                 ExportArgs(gguf=gguf, onnx=args.onnx, ep=args.ep, validate=not args.no_validate,
                            imatrix=args.imatrix, pre_tokenizer=args.pre_tokenizer,
                            eval_text=args.eval_text, threads=args.threads, int4_rule=args.int4_rule,
                            force=args.force))
    v = res["validation"] or {}
    for f in res["files"]:
        line = f"{f['path']:<40} {f['size_bytes'] / 1e6:9.1f} MB  {f['bits_per_weight']:6.2f} bpw"
        if f["fallbacks"]:
            line += f"  {len(f['fallbacks'])} tensors fell back"
        r = (v.get(f["format"]) or {}).get(f["type"])
        if r:
            line += f"  ppl {r['perplexity']:.3f}  top-1 {r['top1_agree']:.1%}"
            if "kld" in r:
                line += f"  KLD {r['kld']['kld_mean']:.4f}"
        print(line)
    for k, e in (v.get("flagged") or {}).items():
        print(f"warning: {k} {e}", file=sys.stderr)
    for k, e in (v.get("failed") or {}).items():
        print(f"error: validation failed: {k}: {e}", file=sys.stderr)
    if v:
        print(f"HF model perplexity {v['hf']['perplexity']:.3f}" +
              (f"; tokenizer ids match on {v['tokenizer']['matching']}/{v['tokenizer']['strings']} strings"
               if "tokenizer" in v else ""))
    print(f"→ {out}; report {out}/report.html")
    return 1 if v.get("failed") else 0
