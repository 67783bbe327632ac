"""`bench_train.py --gpu`: the GPU training table, in one run on one GPU, each row in its own process.

1. ours vs a plain reference loop contained here (`reference_loop`: the same model, packed batches, AdamW,
   regional compile, bf16 autocast; attention through FlexAttention with a document-causal BlockMask built
   from the segment ids; logits + F.cross_entropy): tok/s, MFU (train/flops.py), peak memory. Target ours
   ≥ 1.0×, MFU ≥ 50 % for the 1.1B.
2. trainable=expanded vs full on the 1.1B expanded 22 → 33 (LLaMA Pro, `slm expand --groups 11 --copies 1`):
   step time and optimizer memory; train/flops.py predicts the step-time ratio (≈ 0.78), optimizer
   memory = 1/3.
3. a ~3B Llama (Llama-3.2-3B's shape) full fine-tuning in 80 GB (activation checkpointing), tok/s and MFU.
4. `torchrun --nproc-per-node 1 -m slm.cli train` (FSDP2 forced with fsdp=on) vs the plain run: tok/s
   within 5 %.

Random weights with the real architectures: throughput does not depend on the values. `--dry-run` runs every
row on CPU with a tiny Llama (sdpa, fp32, no MFU), so the script is known to work before a GPU session spends
its minutes on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONE_B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, max_position_embeddings=4096, vocab_size=49152, tie_word_embeddings=False)
# Llama-3.2-3B's shape (config.json of meta-llama/Llama-3.2-3B), with the SmolLM2 tokenizer's vocabulary.
THREE_B = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, max_position_embeddings=4096, vocab_size=49152,
               tie_word_embeddings=True, rope_theta=500000.0)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, vocab_size=49152, tie_word_embeddings=False)


def make_model(folder: Path, cfg: dict) -> Path:
    """A random-weight Llama of shape `cfg` saved to `folder` (initialised on the GPU when there is one:
    fast)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            m = AutoModelForCausalLM.from_config(LlamaConfig(**cfg), dtype=torch.float32)
        m.save_pretrained(str(folder))
        del m
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return folder


def make_expanded(base: Path, folder: Path, groups: int) -> Path:
    """LLaMA Pro expansion of `base` by slm expand: `groups` groups, the top block of each copied above it."""
    if not (folder / "config.json").is_file():
        from slm.surgery.expand import ExpandArgs, expand

        expand(base, folder, ExpandArgs(groups=groups, copies=1, parity=False))
    return folder


def reference_loop(model_dir: Path, data: Path, steps: int, seq: int, batch: int, dry: bool) -> dict:
    """The plain loop anyone can write (69.9 k tok/s on an H200): FlexAttention with a document-causal
    BlockMask, per-block compile, bf16 autocast over fp32 weights, fused AdamW, logits + cross-entropy."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from slm.train.attention import document_block_mask
    from slm.train.pack import IGNORE, Sampler, open_data

    dev = torch.device("cpu" if dry else "cuda")
    impl = "sdpa" if dry else "flex_attention"  # no FlexAttention backward on CPU
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                 attn_implementation=impl).to(dev)
    model.config.use_cache = False
    if not dry:
        for layer in model.model.layers:
            layer.compile(dynamic=False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=not dry or None)
    sampler = Sampler(open_data(data, "train"), seq, seed=0)
    times = []
    for step in range(steps):
        b = sampler.batch(range(step * batch, (step + 1) * batch))
        t0 = time.perf_counter()
        ids, labels, pos, seg = (b[k].to(dev) for k in ("input_ids", "labels", "position_ids", "segments"))
        if dry:
            from slm.train.pack import block_causal_mask

            mask = block_causal_mask(seg, torch.float32)
        else:
            mask = document_block_mask(seg)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=not dry):
            logits = model(input_ids=ids, position_ids=pos, attention_mask=mask).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not dry:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = sorted(times[1:])[len(times[1:]) // 2]
    return {"step_s": med, "tok_s": batch * seq / med,
            "trainable": sum(p.numel() for p in model.parameters())}


def ours(model_dir: Path, data: Path, work: Path, kind: str, steps: int, seq: int, batch: int,
         extra: list) -> dict:
    """`slm train`'s own phases — set_up, build, train_step — for `steps` steps, without evaluation or
    checkpoints (a 3B checkpoint with its optimizer is ~50 GB to write: not what is measured here)."""
    import slm.train.setup as setup_mod
    from slm.train.args import load_recipe
    from slm.train.dist import Dist
    from slm.train.loop import build, train_step

    args = load_recipe(None, [f"model={model_dir}", f"data={data}", f"out={work / ('run-' + kind)}",
                              f"trainable={kind}", f"steps={steps}", f"seq_len={seq}",
                              f"global_batch={batch}", f"micro_batch={batch}", "lr=2e-4", "eval=false",
                              "report=false", "progress=false", "force=true", *extra])
    dist = Dist(args)
    setup_mod._check_disk = lambda *a: None  # nothing is saved
    setup = setup_mod.set_up(args, dist)
    state = build(args, setup, dist)
    state.model.train()
    recs = [train_step(args, setup, dist, state, step) for step in range(steps)][1:]  # the first compiles
    med = sorted(r["step_s"] for r in recs)[len(recs) // 2]
    out = {"step_s": med, "tok_s": batch * seq / med, "trainable": state.n_trainable,
           "attn": setup.attn, "loss": setup.loss}
    if "mfu" in recs[0]:
        out["mfu"] = sorted(r["mfu"] for r in recs)[len(recs) // 2]
    if dist.on:
        import torch

        torch.distributed.destroy_process_group()
    return out


def one_gpu_row(a) -> None:
    """`--one gpu:NAME`: one row in this process; prints `RESULT {json}` with the peak memory."""
    import torch

    work, data = Path(a.work), Path(a.data)
    name = a.one.split(":", 1)[1]
    row = ROWS(a)[name]
    model = Path(row["model"])
    if row["kind"] == "reference":
        r = reference_loop(model, data, a.steps, row["seq"], row["batch"], a.dry_run)
    else:
        r = ours(model, data, work, row["kind"], a.steps, row["seq"], row["batch"], row["extra"] + a.extra)
    r["peak_gb"] = (torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() and not a.dry_run
                    else __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1e6)
    print("RESULT " + json.dumps(r), flush=True)


def ROWS(a) -> dict:
    """name → what one row runs: model folder, kind (reference | full | expanded), seq, batch, recipe
    extras."""
    work = Path(a.work)
    seq, b1, b3 = (64, 2, 1) if a.dry_run else (2048, 8, 4)
    dev = ["device=cpu", "dtype=float32"] if a.dry_run else []
    big = "tiny" if a.dry_run else "1.1b"
    m1, mx, m3 = (work / f"{big}", work / f"{big}-x33", work / ("tiny" if a.dry_run else "3b"))
    from slm.train.loss import has_liger

    rows = {
        "reference": dict(model=m1, kind="reference", seq=seq, batch=b1, extra=[]),
        "ours": dict(model=m1, kind="full", seq=seq, batch=b1, extra=dev),
        "x33-full": dict(model=mx, kind="full", seq=seq, batch=b1, extra=dev),
        "x33-expanded": dict(model=mx, kind="expanded", seq=seq, batch=b1, extra=dev),
        "3b-full": dict(model=m3, kind="full", seq=seq, batch=b3,
                        extra=dev + ["activation_checkpointing=true"]),
        "fsdp-1-rank": dict(model=m1, kind="full", seq=seq, batch=b1, extra=dev + ["fsdp=on"], torchrun=True),
    }
    if has_liger() and not a.dry_run:  # loss=auto is liger here: is it faster than chunked? (measure)
        rows["ours-chunked"] = dict(model=m1, kind="full", seq=seq, batch=b1, extra=["loss=chunked"])
    return rows


def gpu_table(a, stdlib_data) -> None:
    import torch

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg1, cfg3 = (TINY, TINY) if a.dry_run else (ONE_B, THREE_B)
    big = "tiny" if a.dry_run else "1.1b"
    chosen = {k: r for k, r in ROWS(a).items() if not a.only or k in a.only.split(",")}
    needed = {r["model"].name for r in chosen.values()}  # only the models the chosen rows train
    if needed & {big, f"{big}-x33"}:
        make_model(work / big, cfg1)
    if f"{big}-x33" in needed:
        make_expanded(work / big, work / f"{big}-x33", cfg1["num_hidden_layers"] // 2)
    if "3b" in needed:
        make_model(work / "3b", cfg3)
    data = stdlib_data(work, Path(a.tokenizer), files=40 if a.dry_run else 400)
    rows = {}
    for name, row in chosen.items():
        rows[name] = _run_row(a, name, row, data)
        print(name, rows[name], flush=True)
    dev = "CPU dry run (tiny Llama, sdpa, fp32)" if a.dry_run else torch.cuda.get_device_name()
    print(f"\n{dev}, torch {torch.__version__}, {_paths(a)}, median of {a.steps - 1} steps")
    print_table(rows, a)


def _run_row(a, name: str, row: dict, data: Path) -> dict | None:
    py = [sys.executable]
    if row.get("torchrun"):
        py += ["-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port", "29533"]
    cmd = py + [str(HERE / "bench_train.py"), "--gpu", "--one", f"gpu:{name}", "--work", a.work,
                "--data", str(data), "--steps", str(a.steps), "--tokenizer", a.tokenizer] + (
        ["--dry-run"] if a.dry_run else [])
    if a.extra:
        cmd += ["--extra", *a.extra]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": f"{HERE.parent}:{os.environ.get('PYTHONPATH', '')}"}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.row_timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        print(f"{name}: over --row-timeout {a.row_timeout} s\n{err[-2000:]}", flush=True)
        return None
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        print(f"{name}: failed (exit {out.returncode})\n{out.stderr[-3000:]}", flush=True)
        return None
    return json.loads(line[0][7:])


def _paths(a) -> str:
    if a.dry_run:
        return "attn sdpa, loss chunked"
    from slm.train.attention import has_flash
    from slm.train.loss import has_liger

    return (f"attn auto = {'flash (flash-attn)' if has_flash() else 'flex (FlexAttention BlockMask)'}, "
            f"loss auto = {'liger' if has_liger() else 'chunked'}, compile per block")


def print_table(rows: dict, a) -> None:
    print(f"{'row':14} {'tok/s':>10} {'MFU':>7} {'step s':>8} {'peak GB':>8} {'trainable':>14}")
    for k, r in rows.items():
        if r:
            mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
            print(f"{k:14} {r['tok_s']:>10.0f} {mfu:>7} {r['step_s']:>8.3f} {r['peak_gb']:>8.1f} "
                  f"{r['trainable']:>14,}")
    ok = {k: r for k, r in rows.items() if r}
    if "ours" in ok and "reference" in ok:
        print(f"ours / reference loop: {ok['ours']['tok_s'] / ok['reference']['tok_s']:.2f}× "
              "(target ≥ 1.0×)")
    if "x33-full" in ok and "x33-expanded" in ok:
        e, f = ok["x33-expanded"], ok["x33-full"]
        print(f"x33 expanded / full: step time {e['step_s'] / f['step_s']:.2f}× (train/flops.py predicts "
              f"{_predicted_ratio(a):.2f}), optimizer memory {e['trainable'] / f['trainable']:.2f}× "
              "(trainable share)")
    if "ours-chunked" in ok and "ours" in ok:
        print(f"loss liger / chunked: {ok['ours']['tok_s'] / ok['ours-chunked']['tok_s']:.2f}× tok/s, peak "
              f"{ok['ours']['peak_gb']:.1f} vs {ok['ours-chunked']['peak_gb']:.1f} GB")
    if "fsdp-1-rank" in ok and "ours" in ok:
        print(f"torchrun 1 rank FSDP2 / plain: {ok['fsdp-1-rank']['tok_s'] / ok['ours']['tok_s']:.2f}× "
              "(target ≥ 0.95×)")


def _predicted_ratio(a) -> float:
    from slm.io import read_config
    from slm.spec import spec_from_config
    from slm.train.flops import flops_per_token

    cfg = read_config(Path(a.work) / ("tiny-x33" if a.dry_run else "1.1b-x33"))
    spec, seq = spec_from_config(cfg), ROWS(a)["x33-full"]["seq"]
    new = cfg["slm_surgery"]["new_layers"]
    return flops_per_token(spec, seq, new, False) / flops_per_token(spec, seq, list(range(spec.layers)), True)
