"""Rank, world size and device: one process, or torchrun's ranks (gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

import os

import torch

from slm.errors import SlmError

from .args import TrainArgs


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
        torchrun = "LOCAL_RANK" in os.environ
        if args.fsdp is True and not torchrun:
            raise SlmError("fsdp=on needs torchrun: `torchrun --nproc-per-node G -m slm.cli train …`, or use "
                           "fsdp=auto")
        # fsdp=on: a process group (and FSDP2) with one rank too
        self.on = self.world > 1 or args.fsdp is True
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
