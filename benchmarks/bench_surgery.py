"""Peak RSS and wall time of `slm expand` and `slm merge` (SLERP) on the real SmolLM2-135M, against the
naive way (LLaMA-Pro's block_expansion.py and LLaMA-Factory load the whole state dict, build the new one
in memory, then save). Each variant runs in a fresh child process; peak RSS is the child's ru_maxrss.

usage: python benchmarks/bench_surgery.py [HF_MODEL_DIR]   (default: imports the bundled model first)
Target: our peak RSS ≤ 0.5× the naive way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r'''
import json, resource, sys, time
import torch, transformers, safetensors.torch  # the same imports in every variant, so the baseline is fair
variant, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
if variant == "baseline":
    pass
elif variant == "ours-expand":
    from slm.surgery.expand import ExpandArgs, expand
    expand(src, out, ExpandArgs(groups=6, parity=False))
elif variant == "naive-expand":
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    sd, n, new, j = m.state_dict(), m.config.num_hidden_layers, {}, 0
    for i in range(n):
        layer = {k.split(".", 3)[3]: v for k, v in sd.items() if k.startswith(f"model.layers.{i}.")}
        for k, v in layer.items():
            new[f"model.layers.{j}.{k}"] = v
        j += 1
        if (i + 1) % (n // 6) == 0:
            for k, v in layer.items():
                new[f"model.layers.{j}.{k}"] = (torch.zeros_like(v) if ("o_proj" in k or "down_proj" in k)
                                                else v.clone())
            j += 1
    new.update({k: v for k, v in sd.items() if not k.startswith("model.layers.") and k != "lm_head.weight"})
    import os; os.makedirs(out)
    safetensors.torch.save_file(new, out + "/model.safetensors")
elif variant == "ours-slerp":
    from slm.surgery.merge import MergeRecipe, merge
    merge(MergeRecipe(method="slerp", models=[src, src + "-b"], t=0.3), out)
elif variant == "naive-slerp":
    from transformers import AutoModelForCausalLM
    from slm.surgery.merge_ops import slerp
    a = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(src + "-b", dtype=torch.float32).state_dict()
    merged = {k: slerp(0.3, a[k], b[k]) for k in a if k != "lm_head.weight"}
    import os; os.makedirs(out)
    safetensors.torch.save_file(merged, out + "/model.safetensors")
print(json.dumps({"wall_s": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def run(variant: str, src: Path, work: Path) -> dict:
    out = work / variant
    res = subprocess.run([sys.executable, "-c", CHILD, variant, str(src), str(out)], capture_output=True,
                         text=True)
    if res.returncode:
        raise SystemExit(f"{variant} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-surgery-"))
    if len(sys.argv) > 1:
        src = Path(sys.argv[1])
    else:
        from slm.gguf_import import import_gguf

        src = import_gguf(None, work / "smollm2")
    # a second, different checkpoint for the merge: the same model with its layers in reverse order
    if not Path(str(src) + "-b").exists():
        from slm.surgery.upscale import UpscaleArgs, upscale

        n = json.loads((src / "config.json").read_text())["num_hidden_layers"]
        upscale(src, Path(str(src) + "-b"),
                UpscaleArgs(slices=",".join(f"{i}:{i + 1}" for i in reversed(range(n)))))
    rows = []
    base = run("baseline", src, work)
    for op in ("expand", "slerp"):
        ours, naive = run(f"ours-{op}", src, work), run(f"naive-{op}", src, work)
        rows.append((op, ours, naive))
    print(f"\nmodel: {src}  (interpreter + torch/transformers baseline: {base['peak_rss_mb']:.0f} MB)\n")
    print(f"{'operation':<10} {'ours s':>8} {'naive s':>8} {'ours MB':>9} {'naive MB':>9} {'ratio':>7} "
          f"{'ratio above baseline':>21}  target ≤ 0.5")
    for op, o, n in rows:
        r = o["peak_rss_mb"] / n["peak_rss_mb"]
        rb = (o["peak_rss_mb"] - base["peak_rss_mb"]) / (n["peak_rss_mb"] - base["peak_rss_mb"])
        print(f"{op:<10} {o['wall_s']:>8.2f} {n['wall_s']:>8.2f} {o['peak_rss_mb']:>9.0f} "
              f"{n['peak_rss_mb']:>9.0f} {r:>7.2f} {rb:>21.2f}  {'ok' if r <= 0.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
