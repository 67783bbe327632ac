"""Training throughput and memory: ours (expanded / full / LoRA) vs a plain HF Trainer run of the
same config.

CPU (default): the real model expanded 30→36 (SmolLM2-135M), seq 512, batch 1, fp32; each configuration runs
in its own process (peak RSS = that process's ru_maxrss), the first step is excluded from the median.

    .venv/bin/python benchmarks/bench_train.py [--model /tmp/smol-x36] [--steps 5] [--seq-len 512]
    .venv/bin/python benchmarks/bench_train.py --loss      # chunked LM-head CE vs plain: time and peak memory
    python3 benchmarks/bench_train.py --gpu [--dry-run]    # the GPU training table (bench_train_gpu.py)

GPU mode (benchmarks/bench_train_gpu.py) uses random weights with real architectures: ours vs a plain
FlexAttention reference loop on a ~1.1B Llama, expanded vs full on the 1.1B expanded 22 → 33, a ~3B full
fine-tune, torchrun 1-rank FSDP2 vs plain; `--dry-run` runs every row on CPU with a tiny Llama.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def stdlib_data(work: Path, tokenizer: Path, files: int = 300) -> Path:
    # Throughput does not depend on the text: any code will do, so the demo's corpus (its code half only).
    from slm.corpus import stdlib_corpus
    from slm.train.data import DataArgs, Source, prepare

    if (work / "data" / "slm.json").is_file():  # prepared by an earlier run into the same --work
        return work / "data"
    code, _ = stdlib_corpus(work, files)
    prepare(DataArgs([Source("code", str(code))], str(tokenizer), heldout=0.0,
                     workers=min(8, os.cpu_count() or 1), progress=False), work / "data")
    return work / "data"


def run_ours(kind: str, model: Path, data: Path, work: Path, steps: int, seq: int, batch: int,
             extra: list) -> dict:
    from slm.train.args import load_recipe
    from slm.train.loop import train

    res = train(load_recipe(None, [f"model={model}", f"data={data}", f"out={work / ('run-' + kind)}",
                                   f"trainable={kind}", f"steps={steps}", f"seq_len={seq}",
                                   f"global_batch={batch}", f"micro_batch={batch}", "lr=2e-4", "eval=false",
                                   "report=false", "progress=false", "keep_last=1", "force=true",
                                   "save_every=0", *extra]))
    lines = [json.loads(x) for x in (Path(res["out"]) / "metrics.jsonl").read_text().splitlines()]
    steps_ = [x for x in lines if "loss" in x][1:]
    med = sorted(x["step_s"] for x in steps_)[len(steps_) // 2]
    out = {"step_s": med, "tok_s": batch * seq / med,
           "trainable": {f.name: f.value for f in res["figures"]}["trainable_params"]}
    if "mfu" in steps_[0]:
        out["mfu"] = sorted(x["mfu"] for x in steps_)[len(steps_) // 2]
    return out


def run_hf_trainer(model_dir: Path, data: Path, work: Path, steps: int, seq: int, batch: int,
                   bf16: bool = False) -> dict:
    """transformers.Trainer on the same sequences, same frozen layers, optimizer, schedule and precision
    (bf16 autocast when our rows get dtype=bfloat16; no packing mask: the plain causal LM a Trainer user would
    run)."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from slm.io import load_model, read_config
    from slm.train.pack import Sampler, open_data

    model = load_model(model_dir, attn_implementation="sdpa")
    model.config.use_cache = False
    new = read_config(model_dir)["slm_surgery"]["new_layers"]
    model.requires_grad_(False)
    for i in new:
        model.model.layers[i].requires_grad_(True)
    sampler = Sampler(open_data(data, "train"), seq, seed=0)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return steps * batch

        def __getitem__(self, i):
            ids = sampler.sequence(i)["input_ids"]
            return {"input_ids": ids, "labels": ids.clone()}

    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    targs = TrainingArguments(output_dir=str(work / "hf"), per_device_train_batch_size=batch, max_steps=steps,
                              learning_rate=2e-4, weight_decay=0.1, adam_beta2=0.95, adam_epsilon=1e-5,
                              lr_scheduler_type="cosine", warmup_steps=max(1, int(0.06 * steps)),
                              max_grad_norm=1.0, logging_steps=1000, save_strategy="no", report_to=[],
                              use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
                              disable_tqdm=True, bf16=bf16)
    Trainer(model=model, args=targs, train_dataset=DS(), callbacks=[Clock()]).train()
    med = sorted(times[1:])[len(times[1:]) // 2]
    return {"step_s": med, "tok_s": batch * seq / med,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def one(a) -> None:
    """Run one configuration in this process and print its JSON line (peak RSS included)."""
    work = Path(a.work)
    data = Path(a.data)
    if a.one == "hf-trainer":
        r = run_hf_trainer(Path(a.model), data, work, a.steps, a.seq_len, a.batch,
                           "dtype=bfloat16" in (a.extra or []))
    else:
        extra = (["activation_checkpointing=true"] if a.ckpt else []) + a.extra
        r = run_ours(a.one, Path(a.model), data, work, a.steps, a.seq_len, a.batch, extra)
    r["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print("RESULT " + json.dumps(r), flush=True)


def cpu_table(a) -> None:
    """Each configuration in its own process; with --rounds N the configurations alternate N times, so each
    ours/HF ratio is taken from neighbouring runs (this host is shared: compare ratios, not absolute
    speeds)."""
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = stdlib_data(work, Path(a.model))
    runs: dict[str, dict[int, dict]] = {}  # kind → round → result (a failed run leaves its round empty)
    load = [os.getloadavg()[0]]
    for rnd in range(a.rounds):
        for kind in a.kinds.split(","):
            cmd = [sys.executable, str(HERE), "--one", kind, "--model", a.model, "--data", str(data),
                   "--work", str(work), "--steps", str(a.steps), "--seq-len", str(a.seq_len),
                   "--batch", str(a.batch)] + (["--extra", *a.extra] if a.extra else [])
            out = subprocess.run(cmd, capture_output=True, text=True,
                                 env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(f"{kind}: failed\n{out.stderr[-2000:]}")
                continue
            runs.setdefault(kind, {})[rnd] = json.loads(line[0][7:])
            load.append(os.getloadavg()[0])
            print(kind, runs[kind][rnd], flush=True)
    dtype = "bf16 autocast" if "dtype=bfloat16" in a.extra else "fp32"
    print(f"\nCPU, {os.cpu_count()} cores (1-min load average {min(load):.1f}–{max(load):.1f} "
          f"during the runs), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}, {dtype}, "
          f"seq {a.seq_len}, batch {a.batch}, median of {a.steps - 1} steps per run, {a.rounds} round(s)")
    print(f"{'config':12} {'trainable':>12} {'opt state MB':>13} {'step s':>8} {'tok/s':>8} "
          f"{'peak RSS GB':>12}")
    for k, by_round in runs.items():
        rs = list(by_round.values())
        r = sorted(rs, key=lambda x: x["tok_s"])[len(rs) // 2]
        print(f"{k:12} {r['trainable']:>12,} {8 * r['trainable'] / 1e6:>13.1f} {r['step_s']:>8.2f} "
              f"{r['tok_s']:>8.1f} {r['peak_rss_gb']:>12.2f}")
    for ours, other, what in (("expanded", "hf-trainer", "ours / HF Trainer (expanded), tok/s"),
                              ("expanded", "full", "expanded / full, step time")):
        if ours in runs and other in runs:
            pairs = [(runs[ours][n], runs[other][n]) for n in sorted(runs[ours]) if n in runs[other]]
            ratios = [(o["tok_s"] / h["tok_s"]) if other == "hf-trainer" else (o["step_s"] / h["step_s"])
                      for o, h in pairs]
            print(f"{what}: " + ", ".join(f"{x:.2f}×" for x in ratios)
                  + (f" (median {sorted(ratios)[len(ratios) // 2]:.2f}×)" if len(ratios) > 1 else ""))
    if "expanded" in runs and "full" in runs:
        e, f = next(iter(runs["expanded"].values())), next(iter(runs["full"].values()))
        print(f"expanded / full optimizer memory: {e['trainable'] / f['trainable']:.2f}×")


def loss_one(kind: str, tokens: int, hidden: int, vocab: int, repeat: int = 3) -> dict:
    """One LM head + CE forward and backward (plain: fp32 logits then F.cross_entropy; chunked:
    train/loss.py): median time and the peak RSS it added over its inputs."""
    import torch
    import torch.nn.functional as F

    from slm.train.loss import chunked_cross_entropy

    gen = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=gen, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=gen) * 0.02).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), generator=gen)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        if kind == "plain":
            loss = F.cross_entropy((h @ w.t()).float(), y, reduction="sum")
        else:
            loss = chunked_cross_entropy(h, w, y)
        loss.backward()
        times.append(time.perf_counter() - t0)
        h.grad = w.grad = None
    return {"s": sorted(times)[len(times) // 2],
            "added_gb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1e6}


def loss_table(a) -> None:
    """chunked vs plain CE over the LM head (SmolLM2: hidden 576 × vocab 49 152, fp32), each in its own
    process."""
    print(f"LM head + CE, hidden 576, vocab 49152, fp32, CPU ({os.cpu_count()} cores shared), "
          f"forward + backward, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'tokens':>7} {'plain s':>8} {'chunked s':>10} {'plain +RSS GB':>14} {'chunked +RSS GB':>16}")
    for tokens in (512, 2048, 8192):
        r = {}
        for kind in ("plain", "chunked"):
            out = subprocess.run([sys.executable, str(HERE), "--one", f"loss:{kind}:{tokens}"],
                                 capture_output=True, text=True)
            r[kind] = json.loads([x for x in out.stdout.splitlines() if x.startswith("RESULT ")][0][7:])
        print(f"{tokens:>7} {r['plain']['s']:>8.3f} {r['chunked']['s']:>10.3f} "
              f"{r['plain']['added_gb']:>14.2f} {r['chunked']['added_gb']:>16.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description="training throughput and memory: CPU vs HF Trainer, or --gpu")
    ap.add_argument("--model", default="/tmp/smol-x36", help="expanded real model (CPU mode)")
    ap.add_argument("--tokenizer", default="/tmp/smol-x36",
                    help="folder with tokenizer.json (GPU mode: its data)")
    ap.add_argument("--work", default="/tmp/slm-bench-train")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--gpu", action="store_true",
                    help="the GPU training table (benchmarks/bench_train_gpu.py)")
    ap.add_argument("--dry-run", action="store_true", help="with --gpu: every row on CPU with a tiny Llama")
    ap.add_argument("--loss", action="store_true", help="chunked LM-head cross-entropy vs plain (CPU)")
    ap.add_argument("--kinds", default="expanded,hf-trainer,full,lora",
                    help="CPU mode: configurations to run")
    ap.add_argument("--rounds", type=int, default=1,
                    help="CPU mode: alternate the configurations this many times")
    ap.add_argument("--ckpt", action="store_true", help="activation checkpointing")
    ap.add_argument("--extra", nargs="*", default=[],
                    help="more recipe overrides for our rows, e.g. loss=plain")
    ap.add_argument("--only", help="GPU mode: only these rows, comma-separated (reference, ours, x33-full, "
                                   "x33-expanded, 3b-full, fsdp-1-rank, ours-chunked)")
    ap.add_argument("--row-timeout", type=int, default=900, help="GPU mode: seconds per row")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one and a.one.startswith("loss:"):
        _, kind, tokens = a.one.split(":")
        print("RESULT " + json.dumps(loss_one(kind, int(tokens), 576, 49152)), flush=True)
    elif a.one and a.one.startswith("gpu:"):
        import bench_train_gpu

        bench_train_gpu.one_gpu_row(a)
    elif a.one:
        one(a)
    elif a.gpu:
        import bench_train_gpu

        bench_train_gpu.gpu_table(a, stdlib_data)
    elif a.loss:
        loss_table(a)
    else:
        cpu_table(a)


if __name__ == "__main__":
    main()
