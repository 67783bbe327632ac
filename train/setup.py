"""What a training run will do, settled before any weights are read: the model and data it starts from, the
held-out sets, the trainable layers, the step count and accumulation, and the FLOPs per token for MFU. Every
check that can fail on user input is here, so a mistake costs seconds and writes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from slm.errors import SlmError
from slm.io import read_config
from slm.spec import ModelSpec, spec_from_config

from . import checkpoint as ckpt
from .args import TrainArgs
from .attention import check_attn
from .dist import Dist
from .evaluate import heldout_sets
from .flops import flops_per_token, peak_flops
from .loss import check_loss
from .model import check_model, trainable_layers
from .pack import Sampler, data_vocab, open_data


@dataclass
class RunSetup:
    """What a run will do, settled before any weights are read: every check on user input happens in
    set_up."""
    run: Path  # the run folder (checkpoints/, metrics.jsonl, final/, report.html)
    model_dir: Path  # the weights the run starts from: `model`, or what --init names
    cfg: dict  # the starting model's config.json
    sampler: Sampler  # the training batches: a pure function of (seed, sequence index)
    heldout: dict  # held-out sets evaluated during the run (empty: no evaluation)
    layers: list[int]  # decoder layers whose weights change (LoRA: those with adapters)
    total: int  # optimizer steps of the whole run
    accum: int  # micro-batches per optimizer step on each rank
    flops_per_token: float  # training FLOPs per token (train/flops.py), for MFU
    peak_flops: float | None = None  # the device's dense bf16 peak (CUDA, known device); None: no MFU
    # the attention path resolved from `attn` (train/attention.py): flex | flash | sdpa | eager
    attn: str = "sdpa"
    loss: str = "chunked"  # the loss resolved from `loss` (train/loss.py): chunked | liger | plain

    def __post_init__(self):
        if self.total < 1 or self.accum < 1:
            raise SlmError(f"a run needs ≥ 1 step and ≥ 1 micro-batch per step (got {self.total}, "
                           f"{self.accum})")


def set_up(args: TrainArgs, dist: Dist) -> RunSetup:
    """Every check that can fail on user input, before any weights are read."""
    run = Path(args.out)
    attn, loss = check_attn(args.attn, dist.device), check_loss(args.loss, dist.device)
    model_dir = ckpt.resolve_init(Path(args.init)) if args.init else Path(args.model)
    cfg = check_model(args, model_dir)
    spec = spec_from_config(cfg)
    if args.init and args.model:  # its weights replace `model`'s: another shape would train another model
        diff = spec_from_config(read_config(args.model)).shape_differences(spec)
        if diff:
            raise SlmError(f"--init {args.init} is not of model {args.model}'s shape ({', '.join(diff)}): "
                           "pass --init weights of this model (its checkpoint or run), or model=THAT_MODEL")
    train = open_data(args.data, "train")
    vocab = data_vocab(args.data)
    if vocab > spec.vocab:
        raise SlmError(f"the data's tokenizer has {vocab} tokens but the model only {spec.vocab}: "
                       "prepare the data with this model's tokenizer (--tokenizer MODEL)")
    unknown = sorted(set(args.mixture) - set(train))
    if unknown:
        raise SlmError(f"mixture names source {unknown[0]!r}, not in {args.data}: use one of {sorted(train)}")
    sampler = Sampler(train, args.seq_len, args.seed, args.mixture, pad_id=cfg.get("pad_token_id") or 0)
    heldout = heldout_sets(args.data, args.eval_sets, "eval_sets")
    heldout = {k: v for k, v in heldout.items() if v.n_tokens > 1} if args.eval else {}
    per_rank = args.micro_batch * dist.world
    if args.global_batch % per_rank:
        raise SlmError(f"global_batch {args.global_batch} is not a multiple of micro_batch × ranks = "
                       f"{per_rank}")
    _check_run_folder(args, run)
    layers = trainable_layers(args, cfg)
    _check_disk(args, run, spec, layers)
    fpt = flops_per_token(spec, args.seq_len, layers, args.trainable == "full", args.trainable == "lora")
    peak = peak_flops(torch.cuda.get_device_name(dist.device)) if dist.device.type == "cuda" else None
    return RunSetup(run, model_dir, cfg, sampler, heldout, layers, args.total_steps(),
                args.global_batch // per_rank, fpt, peak, attn, loss)


def _check_run_folder(args: TrainArgs, run: Path) -> None:
    if run.exists() and not run.is_dir():
        raise SlmError(f"out {run} is a file, not a run folder: choose another `out`")
    if args.resume:
        if not ckpt.latest(run):
            if (run / "final").is_dir():
                raise SlmError(f"--resume: {run} finished with keep_state=false and kept no checkpoint: "
                               f"start a new run from its weights with --init {run / 'final'}")
            raise SlmError(f"--resume: no complete checkpoint in {run}/checkpoints: start without --resume")
    elif run.exists() and any(run.iterdir()) and not args.force:
        raise SlmError(f"run folder {run} already exists: pass --resume to continue it, --force to replace "
                       "it, or choose another `out`")


def _check_disk(args: TrainArgs, run: Path, spec: ModelSpec, layers: list[int]) -> None:
    """Room for keep_last + 1 checkpoints (one is written before the oldest is deleted) and the final
    model."""
    n_params = spec.params
    n_train = n_params if args.trainable == "full" else (
        len(layers) * spec.layer_params() if args.trainable != "lora" else n_params // 50)
    ckpt.check_disk(run, ckpt.estimate_bytes(n_params, n_train) * (args.keep_last + 1) + 4 * n_params)
