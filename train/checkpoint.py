"""Checkpoints: an HF model folder plus the training state, written atomically, counted only with DONE.

    out/checkpoints/step-000120/
        model/              HF checkpoint (from_pretrained, slm export); LoRA adapters merged in
        trainer_state.pt    trainable tensors, optimizer, scheduler, RNG, step and data position
        recipe.yaml         the resolved recipe
        DONE                written last (llm.c's convention): a folder without it is ignored

A checkpoint is built in a hidden temp folder and renamed into place, so a crash leaves either nothing or
a temp folder that is skipped. State is plain tensors/numbers saved with torch.save and read back with
weights_only=True (no pickle of arbitrary objects). Resume rebuilds the model from the run's starting
weights plus the saved trainable tensors: frozen tensors never change, so this is exact and cheap for
expanded/LoRA runs.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch

from slm.errors import SlmError
from slm.io import copy_aux_files
from slm.recipe import save_recipe

from .model import hf_model, merged_state_dict

DONE = "DONE"


def checkpoint_dirs(run: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if (p / DONE).is_file()), key=lambda p: int(p.name[5:]))


def latest(run: Path) -> Path | None:
    found = checkpoint_dirs(run)
    return found[-1] if found else None


def estimate_bytes(n_params: int, n_trainable: int) -> int:
    """One checkpoint: fp32 model + trainable tensors + two AdamW moments."""
    return 4 * n_params + 4 * n_trainable * 3


def check_disk(path: Path, need: int) -> None:
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    free = shutil.disk_usage(p).free
    if free < need:
        raise SlmError(f"not enough disk for checkpoints under {path}: need ≈ {need / 1e9:.2f} GB, "
                       f"{free / 1e9:.2f} GB free: free space, lower keep_last, or write `out` elsewhere")


def full_state(model, optimizer):
    """(full model state dict, full optimizer state dict) on CPU; a collective under FSDP2. Rank 0 gets them,
    other ranks get empty dicts: torch's full_state_dict with cpu_offload gathers to rank 0 only (its
    StateDictOptions docs: "to prevent CPU OOM"), so no rank but the writer holds a full copy."""
    from torch.distributed.checkpoint.state_dict import (  # torch: deferred, a heavy import
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def save(run: Path, step: int, model, optimizer, scheduler, recipe: dict, model_src: Path, rank: int,
         keep_last: int, extra: dict) -> Path | None:
    """Write checkpoint `step` (every rank calls: gathering is collective; rank 0 writes)."""
    msd, osd = full_state(model, optimizer)
    if rank != 0:
        return None
    root = Path(run) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    hf = hf_model(model)
    hf.save_pretrained(str(tmp / "model"), state_dict=merged_state_dict(msd, model), safe_serialization=True)
    copy_aux_files(model_src, tmp / "model")
    state = {
        "step": step,
        "trainable": {k: v for k, v in msd.items() if k in trainable},
        "optimizer": osd,
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": _py_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        **extra,
    }
    torch.save(state, tmp / "trainer_state.pt")
    save_recipe(tmp, recipe)
    (tmp / DONE).write_text(f"step {step}\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(ckpt: Path, model, optimizer, scheduler) -> dict:
    """Restore trainable tensors, optimizer, scheduler and RNG from a checkpoint; returns its state dict."""
    from torch.distributed.checkpoint.state_dict import (  # torch: deferred, a heavy import
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    try:
        state = torch.load(Path(ckpt) / "trainer_state.pt", weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - a corrupt file is a user-facing problem
        raise SlmError(f"cannot read {ckpt}/trainer_state.pt ({e}); delete that checkpoint to resume from "
                       "the one before") from None
    opts = StateDictOptions(full_state_dict=True, strict=False)
    missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(state["trainable"])
    if missing:
        raise SlmError(f"checkpoint {ckpt} does not match this recipe's trainable parameters "
                       f"(e.g. {sorted(missing)[0]}): resume with the recipe saved in the checkpoint, or "
                       "start a new run with --init")
    set_model_state_dict(model, state["trainable"], options=opts)
    set_optimizer_state_dict(model, optimizer, state["optimizer"],
                             options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    random.setstate(_py_unstate(state["rng"]["python"]))
    return state


def _py_state() -> list:
    v, s, g = random.getstate()
    return [v, list(s), g]


def _py_unstate(x: list) -> tuple:
    return (x[0], tuple(x[1]), x[2])


def resolve_init(path: Path, what: str = "--init") -> Path:
    """--init (and eval's MODEL, named by `what` in the error) accepts an HF folder, a checkpoint folder (its
    model/) or a run folder (its newest checkpoint; a finished run that kept none, keep_state=false: its
    final/)."""
    p = Path(path)
    if (p / "model" / "config.json").is_file():
        return p / "model"
    if (p / "config.json").is_file():
        return p
    last = latest(p)
    if last:
        return last / "model"
    if (p / "final" / "config.json").is_file():
        return p / "final"
    if not p.exists():
        raise SlmError(f"{what} {p} not found: check the path")
    raise SlmError(f"{what} {p}: no HF model (config.json), checkpoint or run with a complete checkpoint "
                   "there; pass a model folder, a checkpoint or a training run")
