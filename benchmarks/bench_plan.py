"""What `slm plan` answers, with quality measured: the bundled SmolLM2-135M's weight types and KV-cache types
scored against f16, then the one-sentence answer for it and for two public shapes.

    .venv/bin/python benchmarks/bench_plan.py [--model DIR] [--out DIR] [--threads 1] [--kv-ctx 2048]

1. The HF model (default: `slm import --default` into a temp folder) is written as an f16 GGUF, quantized to
   q8_0, q6_k, q4_k_m, q4_0 (slm.quant), and each scored against the f16 file on the held-out text (the
   sweep's second-half scoring, 4 windows of 256 tokens): the weights' KLD with the f16 cache.
2. The f16 GGUF with the q8_0 and q4_0 caches against the f16 cache, `--kv-ctx`-token windows, flash
   attention on for all (slm.profiling.sweep.run_kv_quality): the KV rows, with 95 % intervals.
3. Both written as a profile record; `slm plan` reads it for the model on a Jetson Orin Nano 8GB at 4k context
   (depth as is and pruned), and `slm plan --config` answers for Llama-3.2-3B and Qwen2.5-1.5B shapes (no
   weights: no quality, so no recommendation — the sentence says so).

Prints the tables and the answers; the machine's load is printed beside them (a shared machine slows the
scoring, it does not change a KLD: scoring is deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from slm.corpus import heldout_text
from slm.profiling.plan import PlanArgs, run_plan
from slm.profiling.sweep import SweepArgs, make_files, run_kv_quality
from slm.quant.gguf_write import write_gguf
from slm.quant.llamacpp import LlamaCpp
from slm.record import write_record
from slm.score import Scoring, kld, perplexity, score
from slm.spec import spec_from_config
from slm.stats import ci95_se

TYPES = ("f16", "q8_0", "q6_k", "q4_k_m", "q4_0")
LLAMA32_3B = {"model_type": "llama", "num_hidden_layers": 28, "hidden_size": 3072, "intermediate_size": 8192,
              "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
              "max_position_embeddings": 131072, "tie_word_embeddings": True}
QWEN25_15B = {"model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 1536, "intermediate_size": 8960,
              "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
              "max_position_embeddings": 32768, "tie_word_embeddings": True}


def weights_rows(files: dict, threads: int) -> list[dict]:
    sc = Scoring("second_half", 256, 4)
    ref, rows = None, []
    for t in TYPES:
        with LlamaCpp(files[t], 256, threads) as b:
            s = score(b.logits, b.tokenize(heldout_text()), sc)
        k = kld(ref, s, sc) if ref is not None else None
        ref = ref if ref is not None else s
        rows.append({"type": t, "ppl": perplexity(s, sc)["perplexity"],
                     "kld_vs_ref": k["kld_mean"] if k else 0.0,
                     "kld_ci95": ci95_se(k["kld_se"]) if k else 0.0, "reference": "f16"})
        print(f"  {t:7s} ppl {rows[-1]['ppl']:8.3f}  KLD {rows[-1]['kld_vs_ref']:.4f} ± "
              f"{rows[-1]['kld_ci95']:.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="HF folder (default: the bundled model, imported)")
    ap.add_argument("--out", default=None, help="folder for the GGUFs and the quality record")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kv-ctx", type=int, default=2048)
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="bench-plan-"))
    out.mkdir(parents=True, exist_ok=True)
    model = Path(a.model) if a.model else out / "model"
    if not (model / "config.json").is_file():
        from slm.gguf_import import import_gguf
        import_gguf(None, model)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; threads {a.threads}")
    t0 = time.time()
    f16 = out / "model.f16.gguf"
    if not f16.is_file():
        write_gguf(model, f16, "f16")
    files = make_files(f16, TYPES[1:], out, a.threads, {"f16": f16}, progress=lambda m: None)
    print("weights vs f16 (f16 cache; second half of 4 windows of 256 tokens):")
    rows = weights_rows(files, a.threads)
    sa = SweepArgs(types=("f16",), threads=a.threads, kv_types=("q8_0", "q4_0"), kv_ctx=a.kv_ctx, kv_chunks=2)
    kq = run_kv_quality(f16, "f16", sa, 8192, progress=lambda m: print("  " + m, flush=True))
    print(f"KV cache vs f16 cache (f16 weights, {kq['scoring']['what']}; flash attention on for all):")
    print("  type  perplexity ± 95 %     KLD ± 95 %          KLD p99   same top   KV MiB")
    for r in kq["rows"]:
        print(f"  {r['kv_type']:5s} {r['ppl']:8.3f} ± {r['ppl_ci95']:.3f}   {r['kld']:.4f} ± "
              f"{r['kld_ci95']:.4f}     {r['kld_p99']:.4f}    {r['top1_agree']:.3f}     "
              f"{(r['kv_bytes'] or 0) / 2**20:.1f}")
    rec = out / "quality"
    rec.mkdir(exist_ok=True)
    write_record(rec, "profile", {"model": str(model)}, result={"sweep": {"rows": rows, "kv_quality": kq}})
    print(f"scoring took {time.time() - t0:.0f} s; load average now {os.getloadavg()[0]:.1f}")
    print("\nslm plan answers (Jetson Orin Nano 8GB, 4096 tokens):")
    args = PlanArgs(device="jetson-orin-nano-8gb", context=4096, prune=True, quality=str(rec / "slm.json"))
    print("  bundled SmolLM2-135M: " + run_plan(model, args)["answer"])
    for name, cfg in (("Llama-3.2-3B", LLAMA32_3B), ("Qwen2.5-1.5B", QWEN25_15B)):
        c = out / f"{name}.json"
        c.write_text(json.dumps(cfg))
        spec_from_config(cfg)
        res = run_plan(c, PlanArgs(device="jetson-orin-nano-8gb", context=4096))
        print(f"  {name} (--config): " + res["answer"])


if __name__ == "__main__":
    main()
