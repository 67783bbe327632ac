"""The training loop, written out (nanoGPT / torchtune style, no Trainer): one process or torchrun + FSDP2.

Per optimizer step: the global batch (global_batch sequences, a pure function of seed and step) is split
across ranks and accumulation micro-steps; the loss is the true per-token mean over the whole global batch
(each micro-step's summed token loss is divided by the global token count, which is all-reduced first);
then grad clip, AdamW, cosine schedule with linear warm-up.

`train()` reads top-down in five phases, each a function here or in setup.py: set-up (every check on user
input, train/setup.py) → build (model, optimizer, schedule; restored on resume) → step (train_step) →
heldout_eval → save. No callbacks: the loop says in order what happens at every step. Around all of it
(train/control.py): the output guard and lock on `out`, SIGINT/SIGTERM → save and stop, and the non-finite
guard (a NaN/Inf loss or gradient stops the run before the weights change).
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from slm.errors import SlmError
from slm.figure import Figure, analytic, setting, timed
from slm.recipe import save_recipe
from slm.record import write_record
from slm.stats import ci95_se

from . import checkpoint as ckpt
from .args import TrainArgs
from .attention import AttnInputs
from .control import Metrics, StopOnSignal, check_step_finite, check_weights_finite, hf_progress, run_guard
from .dist import Dist
from .evaluate import perplexity
from .loss import LossHead, micro_loss
from .model import build_model, compile_blocks, param_groups, shard_fsdp2, wants_compile
from .pack import IGNORE
from .report import write_train_report
from .setup import RunSetup, set_up
from .track import Tracker, open_tracker


def lr_at(step: int, total: int, args: TrainArgs) -> float:
    """Multiplier of lr: linear warm-up over warmup_ratio × total, then cosine to min_lr_ratio (LLaMA 2)."""
    warm = int(args.warmup_ratio * total)
    if step < warm:
        return (step + 1) / (warm + 1)
    progress = (step - warm) / max(1, total - warm)
    return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainState:
    """What training runs on, built from a RunSetup: the model, its optimizer and schedule, and how batches go
    in."""
    model: torch.nn.Module  # the model (FSDP2-sharded and/or compiled as the recipe asks)
    opt: torch.optim.Optimizer  # AdamW over the trainable parameters only
    sched: torch.optim.lr_scheduler.LambdaLR  # lr_at: linear warm-up, cosine to min_lr_ratio
    attn_inputs: AttnInputs  # segment ids → what isolates packed documents on the attention path
    head: LossHead | None = None  # the LM head computing the loss by chunks (train/loss.py); None: loss=plain
    fsdp: bool = False  # sharded with FSDP2 (torchrun with > 1 rank, or fsdp=on)
    autocast: bool = False  # bf16 autocast in forward (FSDP2 casts through its MixedPrecisionPolicy instead)
    # evaluation passes the 4-D block-diagonal mask (flash-attn varlen isolates documents without it)
    use_mask: bool = True
    n_trainable: int = 0  # trainable parameters
    start: int = 0  # the first step to run: 0, or the step of the checkpoint resumed


def build(args: TrainArgs, setup: RunSetup, dist: Dist) -> TrainState:
    """Model, optimizer and schedule; on --resume, their state, the RNG and the step from the newest
    checkpoint."""
    torch.manual_seed(args.seed)
    bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and dist.device.type == "cuda")
    model, head = build_model(args, setup.model_dir, setup.cfg, dist.device, setup.attn, setup.loss)
    if wants_compile(args, dist.device):
        compile_blocks(model)  # regional: one decoder block's compile time, names unchanged
    fsdp = dist.on and args.fsdp is not False
    if fsdp:
        shard_fsdp2(model, dist.device, bf16)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # fused AdamW: one kernel for all parameters (torch.optim.AdamW docs), on CUDA and on CPU (since torch
    # 2.4; measured here 0.07 vs 0.57 s a step for 108M parameters); FSDP2's sharded parameters on CPU keep
    # the default
    fused = dist.device.type == "cuda" or not fsdp
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=tuple(args.betas),
                            eps=args.eps, fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, setup.total, args))
    start = ckpt.load(ckpt.latest(setup.run), model, opt, sched)["step"] if args.resume else 0
    autocast = bf16 and not fsdp
    attn_inputs = AttnInputs(setup.attn, torch.bfloat16 if autocast else torch.float32)
    return TrainState(model, opt, sched, attn_inputs, head, fsdp=fsdp, autocast=autocast,
                 use_mask=setup.attn != "flash", n_trainable=n_trainable, start=start)


def train(args: TrainArgs) -> dict:
    """Run (or resume) a training run. Returns {"out", "model", "steps", "final": metrics, "figures", ...}; a
    run stopped by SIGINT/SIGTERM returns with "interrupted" and "signal" after saving a checkpoint."""
    dist = Dist(args)
    with run_guard(args, dist), hf_progress(args.progress):  # `out` locked until the end
        setup = set_up(args, dist)  # 1. setup: every check on user input, before any weights are read
        if dist.main and not args.resume and setup.run.exists():
            shutil.rmtree(setup.run)  # --force: only now, after the guard and every check passed
        dist.barrier()
        setup.run.mkdir(parents=True, exist_ok=True)
        state = build(args, setup, dist)  # 2. build: model, optimizer, schedule (their state too, on resume)
        metrics = Metrics(setup.run, dist)
        metrics.begin(state.start if args.resume else None)
        if dist.main and not args.resume:
            save_recipe(setup.run, args)
        tracker = open_tracker(args.report_to, setup.run, args.to_dict(),
                               state.start if args.resume else None, dist.main)
        t_run = time.perf_counter()
        # Signals save a checkpoint from here on; before, the CLI's handlers stop at once (nothing to save
        # yet). `signum` is what every rank agreed on inside fit(): a signal after its last sync is not acted
        # on, so all ranks take the same path through the final (collective) evaluation and save.
        try:
            with StopOnSignal(dist) as stop:
                last_eval, signum = fit(args, setup, dist, state, metrics, tracker, stop)
                if not signum:
                    if setup.heldout and setup.total > state.start:
                        last_eval = heldout_eval(args, setup, dist, state, metrics, tracker, setup.total)
                    if setup.total > state.start or not ckpt.latest(setup.run):
                        save(args, setup, dist, state, setup.total)
            res = _finish(args, dist, setup, state, metrics, last_eval, signum, time.perf_counter() - t_run)
            tracker.figures(res.get("figures", []), res["step"])
            return res
        finally:
            tracker.close()


def fit(args: TrainArgs, setup: RunSetup, dist: Dist, state: TrainState, metrics: Metrics, tracker: Tracker,
        stop: StopOnSignal) -> tuple[dict, int]:
    """Steps 3-5 from state.start until the end or a signal (which saves a checkpoint and stops); returns the
    last held-out evaluation and the signal every rank stopped on (0: none)."""
    last_eval, signum = {}, 0
    if state.start == 0 and setup.heldout:
        last_eval = heldout_eval(args, setup, dist, state, metrics, tracker, 0)
    state.model.train()
    with _progress(args, dist) as bar:
        task = bar.add_task("train", total=setup.total, completed=state.start, stats="")
        for step in range(state.start, setup.total):
            # 3. step: one optimizer step over the global batch
            rec = train_step(args, setup, dist, state, step)
            if rec["step"] % args.log_every == 0 or rec["step"] == setup.total:
                metrics.log(rec)
                tracker.log(rec)
            bar.update(task, advance=1, stats=f"loss {rec['loss']:.4f} lr {rec['lr']:.2e} "
                                              f"gnorm {rec['grad_norm']:.3f} {rec['tok_s']:.0f} tok/s")
            done = step + 1
            stop.sync()
            if _due(args.eval_every, done, setup.total) and setup.heldout:  # 4. evaluate
                last_eval = heldout_eval(args, setup, dist, state, metrics, tracker, done)
            if stop.flag:  # 5. save: Ctrl-C or SIGTERM leaves a checkpoint that --resume continues from
                signum = stop.signum  # synced above: the same on every rank
                save(args, setup, dist, state, done)
                break
            if _due(args.save_every, done, setup.total):
                save(args, setup, dist, state, done)
    return last_eval, signum


def _due(every: int, done: int, total: int) -> bool:
    """A periodic evaluation or checkpoint after step `done` (the end of the run has its own)."""
    return bool(every) and done % every == 0 and done < total


def train_step(args: TrainArgs, setup: RunSetup, dist: Dist, state: TrainState, step: int) -> dict:
    """One optimizer step: this rank's micro-batches of the global batch, the loss as the true per-token mean
    over all of them and all ranks, grad clip, AdamW, schedule. Returns the step's metrics line."""
    t0 = time.perf_counter()
    base = step * args.global_batch
    micro = [setup.sampler.batch(range(base + (m * dist.world + dist.rank) * args.micro_batch,
                                      base + (m * dist.world + dist.rank + 1) * args.micro_batch))
             for m in range(setup.accum)]
    count = dist.sum(float(sum(int((b["labels"] != IGNORE).sum()) for b in micro)))
    if count == 0:
        raise SlmError(f"step {step}: the global batch has no labelled tokens "
                       "(chat data without assistant turns?)")
    loss_sum = 0.0
    for m, b in enumerate(micro):
        if state.fsdp:
            state.model.set_requires_gradient_sync(m == setup.accum - 1)
        loss = micro_loss(state.model, state.head, b, dist.device, state.attn_inputs, state.autocast)
        # FSDP averages gradients over ranks; × world makes the result the global per-token mean.
        (loss * (dist.world / count)).backward()
        loss_sum += float(loss.detach())
    params = [p for p in state.model.parameters() if p.requires_grad]
    gnorm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else float("inf"))
    gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
    lr = state.sched.get_last_lr()[0]
    train_loss = dist.sum(loss_sum) / count
    check_step_finite(dist, step + 1, train_loss, gnorm, args, setup.run)  # before the weights change
    state.opt.step()
    state.sched.step()
    state.opt.zero_grad(set_to_none=True)
    if dist.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = args.global_batch * args.seq_len
    rec = {"step": step + 1, "loss": train_loss, "lr": lr, "grad_norm": gnorm, "tokens": (step + 1) * tokens,
           "label_tokens": int(count), "step_s": dt, "tok_s": tokens / dt}
    if setup.peak_flops:
        rec["mfu"] = setup.flops_per_token * tokens / dt / (setup.peak_flops * dist.world)
    return rec


def heldout_eval(args: TrainArgs, setup: RunSetup, dist: Dist, state: TrainState, metrics: Metrics,
                 tracker: Tracker, step: int) -> dict:
    """Held-out perplexity of every set, logged at `step`."""
    ev = perplexity(state.model, setup.heldout, args.seq_len, args.eval_tokens, dist.device, args.micro_batch,
                    state.use_mask, state.autocast)
    metrics.log({"step": step, "eval": ev})
    tracker.log({"step": step, "eval": ev})
    return ev


def save(args: TrainArgs, setup: RunSetup, dist: Dist, state: TrainState, step: int) -> None:
    """Checkpoint `step` (every rank gathers; rank 0 writes), with the data position it resumes from; never
    one with non-finite weights."""
    check_weights_finite(dist, state.model, step, args, setup.run)
    ckpt.save(setup.run, step, state.model, state.opt, state.sched, args.to_dict(), setup.model_dir,
              dist.rank,
              args.keep_last, {"sequences": step * args.global_batch})
    dist.barrier()


def _finish(args: TrainArgs, dist: Dist, setup: RunSetup, state: TrainState, metrics: Metrics,
            last_eval: dict,
            signum: int, elapsed: float) -> dict:
    """The run's result; on rank 0 also final/ (hard links to the last checkpoint), slm.json and report.html.
    A run stopped by signal `signum` (0: none) gets no final/: its newest checkpoint is what --resume
    takes."""
    run, last, interrupted = setup.run, ckpt.latest(setup.run), bool(signum)
    result = {"out": str(run), "model": str(run / "final") if not interrupted else str(last / "model"),
              "checkpoint": str(last), "interrupted": interrupted, "elapsed_s": elapsed,
              "signal": signal.Signals(signum).name if signum else None, "step": _step_of(last)}
    if not dist.main:
        return result
    lines = metrics.read()
    steps = [x for x in lines if "loss" in x]
    evals = [x for x in lines if "eval" in x]
    figures = train_figures(dist, setup, state, steps, evals)
    result.update(figures=figures, final=steps[-1] if steps else {}, eval=last_eval, evals=evals)
    if not interrupted:
        final = run / "final"
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(last / "model", final, copy_function=os.link)  # hard links: no second copy on disk
        if not args.keep_state:  # final/'s hard links keep the weights; the trainer state goes
            shutil.rmtree(run / "checkpoints")
            result["checkpoint"] = None
    write_record(run, "train", args.to_dict(), {"model": setup.model_dir}, result, figures=figures)
    if args.report:

        write_train_report(run, args.to_dict(), steps, evals, figures)
    return result


def _step_of(checkpoint: Path | None) -> int:
    return int(checkpoint.name[5:]) if checkpoint else 0


def train_figures(dist: Dist, setup: RunSetup, state: TrainState, steps: list[dict],
                  evals: list[dict]) -> list[Figure]:
    """The run's figures (slm.json result.figures): what the index and `slm report compare` show."""
    peak_mem = (torch.cuda.max_memory_allocated(dist.device) if dist.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    tok_s = [x["tok_s"] for x in steps[1:]] or [x["tok_s"] for x in steps]  # the first step warms up
    out = [setting("device", "device", str(dist.device.type)),
           setting("ranks", "training processes (ranks)", dist.world, "ranks"),
           analytic("steps", "optimizer steps", steps[-1]["step"] if steps else 0, "steps", group="training"),
           analytic("trainable_params", "trainable parameters", state.n_trainable, "parameters",
                    group="training", key=True),
           analytic("flops_per_token", "training FLOPs per token", setup.flops_per_token, "FLOP", "lower",
                    "training")]
    if steps:
        out.append(Figure("final_loss", "final training loss (last step)", steps[-1]["loss"], "nats/token",
                          "lower", "training",
                          note="one micro-batch's loss: noisy; the held-out sets say more"))
    if tok_s:
        out.append(timed("tok_s", "training throughput (median step)", statistics.median(tok_s),
                         statistics.stdev(tok_s) if len(tok_s) > 1 else None, len(tok_s), group="training",
                         key=True, note="median over steps; ± over steps"))
    out.append(Figure("peak_memory", "peak memory while training" + (" (GPU)" if dist.device.type == "cuda"
                                                                      else " (process RSS)"),
                      peak_mem, "bytes", "lower", "memory"))
    if setup.peak_flops and steps:
        out.append(Figure("mfu", "model FLOPs utilisation (median step)",
                          statistics.median(x["mfu"] for x in steps), "share", "higher", "training"))
    if evals:
        first, last = evals[0]["eval"], evals[-1]["eval"]
        for k, v in last.items():
            if k in first and evals[0] is not evals[-1]:
                out.append(_eval_ppl(f"eval.{k}.ppl_before", f"perplexity on {k}, before training", first[k]))
            out.append(_eval_ppl(f"eval.{k}.ppl", f"perplexity on {k}", v, key=True))
    return out


def _eval_ppl(name: str, label: str, v: dict, key: bool = False) -> Figure:
    se = v.get("loss_se")
    return Figure(name, label, v["ppl"], "1", "lower", "quality", exact=True, key=key, n=v.get("tokens"),
                  interval=ci95_se(se * v["ppl"]) if se is not None else None,
                  note="held-out tokens; ± first order from the s.e. of the mean token loss")


def _progress(args: TrainArgs, dist: Dist):

    return Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[stats]}"),
                    TextColumn("ETA"), TimeRemainingColumn(), disable=not (args.progress and dist.main))
