"""The training loop, written out (nanoGPT / torchtune style, no Trainer): one process or torchrun + FSDP2.

Per optimizer step: the global batch (global_batch sequences, a pure function of seed and step) is split
across ranks and accumulation micro-steps; the loss is the true per-token mean over the whole global batch
(each micro-step's summed token loss is divided by the global token count, which is all-reduced first);
then grad clip, AdamW, cosine schedule with linear warm-up.

`train()` reads top-down in five phases, each a function here or in plan.py: plan (every check on user
input, train/plan.py) → build (model, optimizer, schedule; restored on resume) → step (train_step) →
evaluate → save. No callbacks: the loop says in order what happens at every step. Around all of it
(train/control.py): the output guard and lock on `out`, SIGINT/SIGTERM → save and stop, and the non-finite
guard (a NaN/Inf loss or gradient stops the run before the weights change).
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slm.errors import SlmError
from slm.recipe import save_recipe
from slm.record import write_record

from . import checkpoint as ckpt
from .args import TrainArgs
from .attention import AttnInputs
from .control import Metrics, StopOnSignal, check_step_finite, check_weights_finite, hf_progress, run_guard
from .dist import Dist
from .evaluate import perplexity
from .loss import LossHead, micro_loss
from .model import build_model, compile_blocks, param_groups, shard_fsdp2, wants_compile
from .pack import IGNORE
from .plan import Plan, plan_run


def lr_at(step: int, total: int, args: TrainArgs) -> float:
    """Multiplier of lr: linear warm-up over warmup_ratio × total, then cosine to min_lr_ratio (LLaMA 2)."""
    warm = int(args.warmup_ratio * total)
    if step < warm:
        return (step + 1) / (warm + 1)
    progress = (step - warm) / max(1, total - warm)
    return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Parts:
    """What training runs on, built from a Plan: the model, its optimizer and schedule, and how batches go in."""
    model: torch.nn.Module  # the model (FSDP2-sharded and/or compiled as the recipe asks)
    opt: torch.optim.Optimizer  # AdamW over the trainable parameters only
    sched: torch.optim.lr_scheduler.LambdaLR  # lr_at: linear warm-up, cosine to min_lr_ratio
    attn_inputs: AttnInputs  # segment ids → what isolates packed documents on the attention path
    head: LossHead | None = None  # the LM head computing the loss by chunks (train/loss.py); None: loss=plain
    fsdp: bool = False  # sharded with FSDP2 (torchrun with > 1 rank, or fsdp=on)
    autocast: bool = False  # bf16 autocast in forward (FSDP2 casts through its MixedPrecisionPolicy instead)
    use_mask: bool = True  # evaluation passes the 4-D block-diagonal mask (flash-attn varlen isolates documents without it)
    n_trainable: int = 0  # trainable parameters
    start: int = 0  # the first step to run: 0, or the step of the checkpoint resumed


def build(args: TrainArgs, plan: Plan, dist: Dist) -> Parts:
    """Model, optimizer and schedule; on --resume, their state, the RNG and the step from the newest checkpoint."""
    torch.manual_seed(args.seed)
    bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and dist.device.type == "cuda")
    model, head = build_model(args, plan.model_dir, plan.cfg, dist.device, plan.attn, plan.loss)
    if wants_compile(args, dist.device):
        compile_blocks(model)  # regional: one decoder block's compile time, names unchanged
    fsdp = dist.on and args.fsdp is not False
    if fsdp:
        shard_fsdp2(model, dist.device, bf16)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cuda = dist.device.type == "cuda"  # fused AdamW: one kernel for all parameters (torch.optim.AdamW docs)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=tuple(args.betas), eps=args.eps,
                            fused=cuda or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, plan.total, args))
    start = ckpt.load(ckpt.latest(plan.run), model, opt, sched)["step"] if args.resume else 0
    autocast = bf16 and not fsdp
    attn_inputs = AttnInputs(plan.attn, torch.bfloat16 if autocast else torch.float32)
    return Parts(model, opt, sched, attn_inputs, head, fsdp=fsdp, autocast=autocast, use_mask=plan.attn != "flash",
                 n_trainable=n_trainable, start=start)


def train(args: TrainArgs) -> dict:
    """Run (or resume) a training run. Returns {"out", "model", "steps", "final": metrics, "summary", ...}; a run
    stopped by SIGINT/SIGTERM returns with "interrupted" and "signal" after saving a checkpoint."""
    dist = Dist(args)
    with run_guard(args, dist), hf_progress(args.progress):  # `out` locked until the end
        plan = plan_run(args, dist)  # 1. plan: every check on user input, before any weights are read
        if dist.main and not args.resume and plan.run.exists():
            shutil.rmtree(plan.run)  # --force: only now, after the guard and every check passed
        dist.barrier()
        plan.run.mkdir(parents=True, exist_ok=True)
        parts = build(args, plan, dist)  # 2. build: model, optimizer, schedule (their state too, on resume)
        metrics = Metrics(plan.run, dist)
        metrics.begin(parts.start if args.resume else None)
        if dist.main and not args.resume:
            save_recipe(plan.run, args)
        t_run = time.perf_counter()
        # Signals save a checkpoint from here on; before, the CLI's handlers stop at once (nothing to save yet).
        # `signum` is what every rank agreed on inside fit(): a signal after its last sync is not acted on, so
        # all ranks take the same path through the final (collective) evaluation and save.
        with StopOnSignal(dist) as stop:
            last_eval, signum = fit(args, plan, dist, parts, metrics, stop)
            if not signum:
                if plan.heldout and plan.total > parts.start:
                    last_eval = evaluate(args, plan, dist, parts, metrics, plan.total)
                if plan.total > parts.start or not ckpt.latest(plan.run):
                    save(args, plan, dist, parts, plan.total)
        return _finish(args, dist, plan, parts, metrics, last_eval, signum, time.perf_counter() - t_run)


def fit(args: TrainArgs, plan: Plan, dist: Dist, parts: Parts, metrics: Metrics,
        stop: StopOnSignal) -> tuple[dict, int]:
    """Steps 3-5 from parts.start until the end or a signal (which saves a checkpoint and stops); returns the
    last held-out evaluation and the signal every rank stopped on (0: none)."""
    last_eval, signum = {}, 0
    if parts.start == 0 and plan.heldout:
        last_eval = evaluate(args, plan, dist, parts, metrics, 0)
    parts.model.train()
    with _progress(args, dist) as bar:
        task = bar.add_task("train", total=plan.total, completed=parts.start, stats="")
        for step in range(parts.start, plan.total):
            rec = train_step(args, plan, dist, parts, step)  # 3. step: one optimizer step over the global batch
            if rec["step"] % args.log_every == 0 or rec["step"] == plan.total:
                metrics.log(rec)
            bar.update(task, advance=1, stats=f"loss {rec['loss']:.4f} lr {rec['lr']:.2e} "
                                              f"gnorm {rec['grad_norm']:.3f} {rec['tok_s']:.0f} tok/s")
            done = step + 1
            stop.sync()
            if _due(args.eval_every, done, plan.total) and plan.heldout:  # 4. evaluate
                last_eval = evaluate(args, plan, dist, parts, metrics, done)
            if stop.flag:  # 5. save: Ctrl-C or SIGTERM leaves a checkpoint that --resume continues from
                signum = stop.signum  # synced above: the same on every rank
                save(args, plan, dist, parts, done)
                break
            if _due(args.save_every, done, plan.total):
                save(args, plan, dist, parts, done)
    return last_eval, signum


def _due(every: int, done: int, total: int) -> bool:
    """A periodic evaluation or checkpoint after step `done` (the end of the run has its own)."""
    return bool(every) and done % every == 0 and done < total


def train_step(args: TrainArgs, plan: Plan, dist: Dist, parts: Parts, step: int) -> dict:
    """One optimizer step: this rank's micro-batches of the global batch, the loss as the true per-token mean over
    all of them and all ranks, grad clip, AdamW, schedule. Returns the step's metrics line."""
    t0 = time.perf_counter()
    base = step * args.global_batch
    micro = [plan.sampler.batch(range(base + (m * dist.world + dist.rank) * args.micro_batch,
                                      base + (m * dist.world + dist.rank + 1) * args.micro_batch))
             for m in range(plan.accum)]
    count = dist.sum(float(sum(int((b["labels"] != IGNORE).sum()) for b in micro)))
    if count == 0:
        raise SlmError(f"step {step}: the global batch has no labelled tokens (chat data without assistant turns?)")
    loss_sum = 0.0
    for m, b in enumerate(micro):
        if parts.fsdp:
            parts.model.set_requires_gradient_sync(m == plan.accum - 1)
        loss = micro_loss(parts.model, parts.head, b, dist.device, parts.attn_inputs, parts.autocast)
        # FSDP averages gradients over ranks; × world makes the result the global per-token mean.
        (loss * (dist.world / count)).backward()
        loss_sum += float(loss.detach())
    params = [p for p in parts.model.parameters() if p.requires_grad]
    gnorm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else float("inf"))
    gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
    lr = parts.sched.get_last_lr()[0]
    train_loss = dist.sum(loss_sum) / count
    check_step_finite(dist, step + 1, train_loss, gnorm, args, plan.run)  # before the weights change
    parts.opt.step()
    parts.sched.step()
    parts.opt.zero_grad(set_to_none=True)
    if dist.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = args.global_batch * args.seq_len
    rec = {"step": step + 1, "loss": train_loss, "lr": lr, "grad_norm": gnorm, "tokens": (step + 1) * tokens,
           "label_tokens": int(count), "step_s": dt, "tok_s": tokens / dt}
    if plan.peak_flops:
        rec["mfu"] = plan.flops_per_token * tokens / dt / (plan.peak_flops * dist.world)
    return rec


def evaluate(args: TrainArgs, plan: Plan, dist: Dist, parts: Parts, metrics: Metrics, step: int) -> dict:
    """Held-out perplexity of every set, logged at `step`."""
    ev = perplexity(parts.model, plan.heldout, args.seq_len, args.eval_tokens, dist.device, args.micro_batch,
                    parts.use_mask, parts.autocast)
    metrics.log({"step": step, "eval": ev})
    return ev


def save(args: TrainArgs, plan: Plan, dist: Dist, parts: Parts, step: int) -> None:
    """Checkpoint `step` (every rank gathers; rank 0 writes), with the data position it resumes from; never one
    with non-finite weights."""
    check_weights_finite(dist, parts.model, step, args, plan.run)
    ckpt.save(plan.run, step, parts.model, parts.opt, parts.sched, args.to_dict(), plan.model_dir, dist.rank,
              args.keep_last, {"sequences": step * args.global_batch})
    dist.barrier()


def _finish(args: TrainArgs, dist: Dist, plan: Plan, parts: Parts, metrics: Metrics, last_eval: dict,
            signum: int, elapsed: float) -> dict:
    """The run's result; on rank 0 also final/ (hard links to the last checkpoint), slm.json and report.html.
    A run stopped by signal `signum` (0: none) gets no final/: its newest checkpoint is what --resume takes."""
    run, last, interrupted = plan.run, ckpt.latest(plan.run), bool(signum)
    result = {"out": str(run), "model": str(run / "final") if not interrupted else str(last / "model"),
              "checkpoint": str(last), "interrupted": interrupted, "elapsed_s": elapsed,
              "signal": signal.Signals(signum).name if signum else None, "step": _step_of(last)}
    if not dist.main:
        return result
    lines = metrics.read()
    steps = [x for x in lines if "loss" in x]
    evals = [x for x in lines if "eval" in x]
    summary = _summary(dist, plan, parts, steps, evals)
    result.update(summary=summary, final=steps[-1] if steps else {}, eval=last_eval, evals=evals)
    if not interrupted:
        final = run / "final"
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(last / "model", final, copy_function=os.link)  # hard links: no second copy on disk
    write_record(run, "train", args.to_dict(), {"model": plan.model_dir}, result)
    if args.report:
        from .report import write_train_report

        write_train_report(run, args.to_dict(), steps, evals, summary)
    return result


def _step_of(checkpoint: Path | None) -> int:
    return int(checkpoint.name[5:]) if checkpoint else 0


def _summary(dist: Dist, plan: Plan, parts: Parts, steps: list[dict], evals: list[dict]) -> dict:
    """The run's key figures (slm.json result.summary): what the index and `slm report compare` show."""
    peak_mem = (torch.cuda.max_memory_allocated(dist.device) if dist.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    tok_s = [x["tok_s"] for x in steps[1:]] or [x["tok_s"] for x in steps]  # the first step warms up
    summary = {"steps": steps[-1]["step"] if steps else 0, "final train loss": steps[-1]["loss"] if steps else None,
               "trainable params": parts.n_trainable, "tok/s (median)": sorted(tok_s)[len(tok_s) // 2] if tok_s else None,
               "peak memory GB": peak_mem / 1e9, "flops/token": plan.flops_per_token, "ranks": dist.world,
               "device": str(dist.device.type)}
    if plan.peak_flops and steps:
        summary["MFU (median)"] = sorted(x["mfu"] for x in steps)[len(steps) // 2]
    if evals:
        first, lastev = evals[0]["eval"], evals[-1]["eval"]
        for k in lastev:
            summary[f"{k} ppl"] = lastev[k]["ppl"]
            if k in first:
                summary[f"{k} ppl before"] = first[k]["ppl"]
    return summary


def _progress(args: TrainArgs, dist: Dist):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[stats]}"),
                    TextColumn("ETA"), TimeRemainingColumn(), disable=not (args.progress and dist.main))
