"""The training loop, written out (nanoGPT / torchtune style, no Trainer): one process or torchrun + FSDP2.

Per optimizer step: the global batch (global_batch sequences, a pure function of seed and step) is split
across ranks and accumulation micro-steps; the loss is the true per-token mean over the whole global batch
(each micro-step's summed token loss is divided by the global token count, which is all-reduced first);
then grad clip, AdamW, cosine schedule with linear warm-up.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import time
from pathlib import Path

import torch

from slm.errors import SlmError
from slm.record import write_record
from slm.spec import spec_from_config

from . import checkpoint as ckpt
from .args import TrainArgs
from .evaluate import perplexity, token_loss
from .flops import flops_per_token, peak_flops
from .model import attn_implementation, build_model, check_model, param_groups, shard_fsdp2, trainable_layers
from .pack import Sampler, data_vocab, open_data


class Dist:
    """Rank, world size and device, from torchrun's environment (1 process without it)."""

    def __init__(self, args: TrainArgs):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SlmError("device=cuda but no CUDA device is visible: use device=cpu or auto")
        self.device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.on = self.world > 1
        if self.on and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
        self.main = self.rank == 0

    def sum(self, x: float) -> float:
        if not self.on:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def barrier(self):
        if self.on:
            torch.distributed.barrier()


def lr_at(step: int, total: int, args: TrainArgs) -> float:
    """Multiplier of lr: linear warm-up over warmup_ratio × total, then cosine to min_lr_ratio (LLaMA 2)."""
    warm = int(args.warmup_ratio * total)
    if step < warm:
        return (step + 1) / (warm + 1)
    progress = (step - warm) / max(1, total - warm)
    return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def preflight(args: TrainArgs, dist: Dist) -> dict:
    """Every check that can fail on user input, before any weights are read."""
    run = Path(args.out)
    model_dir = ckpt.resolve_init(Path(args.init)) if args.init else Path(args.model)
    cfg = check_model(args, model_dir)
    train = open_data(args.data, "train")
    vocab = data_vocab(args.data)
    if vocab > cfg["vocab_size"]:
        raise SlmError(f"the data's tokenizer has {vocab} tokens but the model only {cfg['vocab_size']}: "
                       "prepare the data with this model's tokenizer (--tokenizer MODEL)")
    unknown = sorted(set(args.mixture) - set(train))
    if unknown:
        raise SlmError(f"mixture names source {unknown[0]!r}, not in {args.data}: use one of {sorted(train)}")
    sampler = Sampler(train, args.seq_len, args.seed, args.mixture, pad_id=cfg.get("pad_token_id") or 0)
    heldout = open_data(args.data, "heldout")
    if args.eval_sets:
        missing = sorted(set(args.eval_sets) - set(heldout))
        if missing:
            raise SlmError(f"eval_sets names {missing[0]!r}, not in {args.data}: use some of {sorted(heldout)}")
        heldout = {k: heldout[k] for k in args.eval_sets}
    heldout = {k: v for k, v in heldout.items() if v.n_tokens > 1} if args.eval else {}
    per_rank = args.micro_batch * dist.world
    if args.global_batch % per_rank:
        raise SlmError(f"global_batch {args.global_batch} is not a multiple of micro_batch × ranks = {per_rank}")
    if args.resume:
        if not ckpt.latest(run):
            raise SlmError(f"--resume: no complete checkpoint in {run}/checkpoints: start without --resume")
    elif run.exists() and any(run.iterdir()) and not args.force:
        raise SlmError(f"run folder {run} already exists: pass --resume to continue it, --force to replace it, "
                       "or choose another `out`")
    layers = trainable_layers(args, cfg)
    spec = spec_from_config(cfg)
    n_params = spec.params
    n_train = n_params if args.trainable == "full" else (
        len(layers) * spec.layer_params() if args.trainable != "lora" else n_params // 50)
    need = ckpt.estimate_bytes(n_params, n_train) * (args.keep_last + 1) + 4 * n_params
    ckpt.check_disk(run, need)
    return {"run": run, "model_dir": model_dir, "cfg": cfg, "sampler": sampler, "heldout": heldout, "layers": layers}


def train(args: TrainArgs) -> dict:
    """Run (or resume) a training run. Returns {"out", "model", "steps", "final": metrics, "summary", ...}."""
    dist = Dist(args)
    pre = preflight(args, dist)
    run, cfg, sampler = pre["run"], pre["cfg"], pre["sampler"]
    if dist.main and not args.resume and run.exists():
        shutil.rmtree(run)
    dist.barrier()
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    attn = attn_implementation(args, dist.device)
    use_mask = attn != "flash_attention_2"  # flash-attn varlen isolates documents from the reset position ids
    bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and dist.device.type == "cuda")
    model = build_model(args, pre["model_dir"], cfg, dist.device, attn)
    fsdp = dist.on and args.fsdp == "auto"
    if fsdp:
        shard_fsdp2(model, dist.device, bf16)
    autocast = bf16 and not fsdp  # FSDP2 casts through its MixedPrecisionPolicy instead
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=tuple(args.betas), eps=args.eps,
                            foreach=dist.device.type == "cuda")
    total = args.total_steps()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, args))
    if args.compile:
        model = torch.compile(model)
    start = 0
    metrics_path = run / "metrics.jsonl"
    if args.resume:
        state = ckpt.load(ckpt.latest(run), model, opt, sched)
        start = state["step"]
        if dist.main:
            _truncate_metrics(metrics_path, start)
    elif dist.main:
        metrics_path.write_text("")
        (run / "recipe.yaml").write_text(_yaml(args.to_dict()))
    recipe = args.to_dict()
    fpt = flops_per_token(cfg, args.seq_len, pre["layers"], args.trainable == "full", args.trainable == "lora")
    peak = peak_flops(torch.cuda.get_device_name(dist.device)) if dist.device.type == "cuda" else None
    accum = args.global_batch // (args.micro_batch * dist.world)
    stop = {"flag": False}
    old_handler = signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True)) if dist.main else None

    def log(rec: dict):
        if dist.main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def run_eval(step: int) -> dict:
        ev = perplexity(model, pre["heldout"], args.seq_len, args.eval_tokens, dist.device, args.micro_batch,
                        use_mask, autocast)
        log({"step": step, "eval": ev})
        return ev

    def save(step: int, seqs: int):
        ckpt.save(run, step, model, opt, sched, recipe, pre["model_dir"], dist.rank, args.keep_last,
                  {"sequences": seqs})
        dist.barrier()

    last_eval = run_eval(start) if start == 0 and pre["heldout"] else {}
    model.train()
    t_run, interrupted, step = time.perf_counter(), False, start
    bar = _progress(args, dist, total, start)
    tokens_per_step = args.global_batch * args.seq_len
    with bar:
        task = bar.add_task("train", total=total, completed=start, stats="")
        for step in range(start, total):
            t0 = time.perf_counter()
            base = step * args.global_batch
            micro = [sampler.batch(range(base + (m * dist.world + dist.rank) * args.micro_batch,
                                         base + (m * dist.world + dist.rank + 1) * args.micro_batch))
                     for m in range(accum)]
            count = dist.sum(float(sum(int((b["labels"] != -100).sum()) for b in micro)))
            if count == 0:
                raise SlmError(f"step {step}: the global batch has no labelled tokens (chat data without assistant turns?)")
            loss_sum = 0.0
            for m, b in enumerate(micro):
                if fsdp:
                    model.set_requires_gradient_sync(m == accum - 1)
                loss, _ = token_loss(model, b, dist.device, use_mask, autocast)
                # FSDP averages gradients over ranks; × world makes the result the global per-token mean.
                (loss * (dist.world / count)).backward()
                loss_sum += float(loss.detach())
            params = [p for p in model.parameters() if p.requires_grad]
            gnorm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else float("inf"))
            gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            train_loss = dist.sum(loss_sum) / count
            if dist.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            rec = {"step": step + 1, "loss": train_loss, "lr": lr, "grad_norm": gnorm, "tokens": (step + 1) * tokens_per_step,
                   "label_tokens": int(count), "step_s": dt, "tok_s": tokens_per_step / dt}
            if peak:
                rec["mfu"] = fpt * tokens_per_step / dt / (peak * dist.world)
            if (step + 1) % args.log_every == 0 or step + 1 == total:
                log(rec)
            bar.update(task, advance=1, stats=f"loss {train_loss:.4f} lr {lr:.2e} gnorm {gnorm:.3f} "
                                               f"{rec['tok_s']:.0f} tok/s")
            done = step + 1
            if dist.on:
                stop["flag"] = dist.sum(float(stop["flag"])) > 0
            if args.eval_every and done % args.eval_every == 0 and done < total and pre["heldout"]:
                last_eval = run_eval(done)
            if stop["flag"]:
                save(done, done * args.global_batch)
                interrupted = True
                break
            if args.save_every and done % args.save_every == 0 and done < total:
                save(done, done * args.global_batch)
        else:
            done = total
    if old_handler is not None:
        signal.signal(signal.SIGINT, old_handler)
    if not interrupted:
        if pre["heldout"] and total > start:
            last_eval = run_eval(total)
        if total > start or not ckpt.latest(run):
            save(total, total * args.global_batch)
    return _finish(args, dist, run, pre, last_eval, interrupted, time.perf_counter() - t_run, n_trainable, fpt, peak)


def _finish(args, dist, run, pre, last_eval, interrupted, elapsed, n_trainable, fpt, peak) -> dict:
    last = ckpt.latest(run)
    result = {"out": str(run), "model": str(run / "final") if not interrupted else str(last / "model"),
              "checkpoint": str(last), "interrupted": interrupted, "elapsed_s": elapsed}
    if not dist.main:
        return result
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [x for x in lines if "loss" in x]
    evals = [x for x in lines if "eval" in x]
    peak_mem = (torch.cuda.max_memory_allocated(dist.device) if dist.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    tok_s = [x["tok_s"] for x in steps[1:]] or [x["tok_s"] for x in steps]
    summary = {"steps": steps[-1]["step"] if steps else 0, "final train loss": steps[-1]["loss"] if steps else None,
               "trainable params": n_trainable, "tok/s (median)": sorted(tok_s)[len(tok_s) // 2] if tok_s else None,
               "peak memory GB": peak_mem / 1e9, "flops/token": fpt, "ranks": dist.world, "device": str(dist.device.type)}
    if peak and steps:
        summary["MFU (median)"] = sorted(x["mfu"] for x in steps)[len(steps) // 2]
    if evals:
        first, lastev = evals[0]["eval"], evals[-1]["eval"]
        for k in lastev:
            summary[f"{k} ppl"] = lastev[k]["ppl"]
            if k in first:
                summary[f"{k} ppl before"] = first[k]["ppl"]
    result.update(summary=summary, final=steps[-1] if steps else {}, eval=last_eval, evals=evals)
    if not interrupted:
        final = run / "final"
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(last / "model", final, copy_function=os.link)  # hard links: no second copy on disk
    write_record(run, "train", args.to_dict(), {"model": pre["model_dir"]}, result)
    if args.report:
        from .report import write_train_report

        write_train_report(run, args.to_dict(), steps, evals, summary)
    return result


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint being resumed (they will be recomputed identically)."""
    if path.is_file():
        keep = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= step]
        path.write_text("".join(x + "\n" for x in keep))


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


def _progress(args: TrainArgs, dist: Dist, total: int, start: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[stats]}"),
                    TextColumn("ETA"), TimeRemainingColumn(), disable=not (args.progress and dist.main))
