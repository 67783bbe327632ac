"""What keeps a run's work safe while it trains: the output guard held for the whole run, metrics.jsonl that a
kill mid-write cannot break, stopping on SIGINT/SIGTERM with a checkpoint, and the non-finite guard.

Under torchrun every decision here is agreed by all ranks through one all-reduce, so no rank stops (or waits
in a collective) while another carries on.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from slm.errors import SlmError
from slm.guard import clean_stale_temps, guard_output

from . import checkpoint as ckpt
from .args import TrainArgs
from .dist import Dist


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def run_guard(args: TrainArgs, dist: Dist) -> Iterator[None]:
    """Hold slm.guard's output guard on `out` for the whole run: `out` may not be, contain or lie inside the
    model, the --init weights or the data (even with --force), must be writable, and is locked against a
    second run. Rank 0 takes it (the lock is one per output); every rank learns whether it was refused.
    Whether an existing run folder may be reused is set_up's question (its message names --resume and
    --force). A lock of a dead PID is broken by the guard itself; --resume also breaks an owner-less one, as
    --force would: resuming says the run that held it is over, and --force is not allowed there."""
    with contextlib.ExitStack() as stack:
        refused = None
        if dist.main:
            try:
                stack.enter_context(guard_output(args.out, [args.model, args.init, args.data],
                                                 force=args.force or args.resume, exists_ok=True))
                clean_stale_temps(Path(args.out) / "checkpoints", "step-")  # checkpoint writes of killed runs
            except Exception as e:  # any failure (not only SlmError) must reach the other ranks, or they hang
                refused = e
        if dist.sum(float(refused is not None)) > 0:
            raise refused or SlmError(f"rank 0 refused the output {args.out}: see its error")
        yield


class Metrics:
    """metrics.jsonl: one JSON line per logged step or evaluation. Only rank 0 writes."""

    def __init__(self, run: Path, dist: Dist):
        self.path, self.main = run / "metrics.jsonl", dist.main

    def begin(self, resumed_step: int | None) -> None:
        """An empty file for a new run; on resume, drop the lines past the checkpoint (they recur identically)
        and any line a kill cut short mid-write."""
        if not self.main:
            return
        if resumed_step is None:
            self.path.write_text("")
        elif self.path.is_file():
            lines, bad = _parse(self.path.read_text())
            if bad:
                _say(f"dropped {bad} unreadable line(s) of {self.path}: the run was killed "
                     "while writing them")
            self.path.write_text("".join(json.dumps(x) + "\n" for x in lines if x["step"] <= resumed_step))

    def log(self, rec: dict) -> None:
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def read(self) -> list[dict]:
        return _parse(self.path.read_text())[0]


def _parse(text: str) -> tuple[list[dict], int]:
    """(the records of a metrics file, how many non-empty lines were not one)."""
    recs, bad = [], 0
    for line in filter(str.strip, text.splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            recs.append(rec)
        else:
            bad += 1
    return recs, bad


class StopOnSignal:
    """SIGINT (Ctrl-C) and SIGTERM (`timeout`, Slurm, Kubernetes) ask the loop to save a checkpoint and stop
    after the current step. Every rank catches both (torchrun forwards signals to its workers), and `sync`
    lets every rank learn of either at the same step, so they save together; SIGTERM wins when both came."""

    def __init__(self, dist: Dist):
        self.dist, self.signum, self._old = dist, 0, {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._set)
        return self

    def _set(self, signum, _frame):
        self.signum = max(self.signum, signum)  # SIGTERM (15) over SIGINT (2): the scheduler's word is final

    @property
    def flag(self) -> bool:
        return bool(self.signum)

    def sync(self) -> None:
        if self.dist.on:
            # one all-reduce says both whether any rank was signalled and whether any got SIGTERM
            v = self.dist.sum(float(self.signum == signal.SIGTERM) * 1000 + float(self.signum != 0))
            self.signum = signal.SIGTERM if v >= 1000 else (signal.SIGINT if v > 0 else 0)

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


@contextlib.contextmanager
def hf_progress(on: bool) -> Iterator[None]:
    """progress=false silences transformers' own bars too (loading weights, writing shards), so a run's stderr
    holds only what it says itself."""
    from transformers.utils import logging as hf_logging  # transformers: deferred, a heavy import

    was = hf_logging.is_progress_bar_enabled()
    if not on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not on:
            hf_logging.enable_progress_bar()


def check_step_finite(dist: Dist, step: int, loss: float, gnorm: float, args: TrainArgs, run: Path) -> None:
    """Before the optimizer step: a non-finite loss or gradient norm on any rank stops every rank, so the
    weights keep their last finite values and nothing non-finite is ever saved."""
    if dist.sum(float(not (math.isfinite(loss) and math.isfinite(gnorm)))) > 0:
        what = " and ".join(f"{n} is {v:g}" for n, v in (("the loss", loss), ("the gradient norm", gnorm))
                            if not math.isfinite(v)) or "another rank's loss is not finite"
        raise SlmError(f"step {step}: {what}, so training stopped before updating the weights; likely cause: "
                       f"learning rate too high (lr={args.lr:g}) or bad data; {_kept(run)}: lower lr or "
                       "check the data and start again")


def check_weights_finite(dist: Dist, model: torch.nn.Module, step: int, args: TrainArgs, run: Path) -> None:
    """Before a checkpoint: the trainable weights (the only ones that change) are finite on every rank."""
    local = (p.to_local() if hasattr(p, "to_local") else p for p in model.parameters() if p.requires_grad)
    bad = any(not bool(torch.isfinite(p.detach()).all()) for p in local)
    if dist.sum(float(bad)) > 0:
        raise SlmError(f"step {step}: the weights are no longer finite, so this checkpoint was not written; "
                       f"likely cause: learning rate too high (lr={args.lr:g}); {_kept(run)}: lower lr and "
                       "start again")


def _kept(run: Path) -> str:
    last = ckpt.latest(run)
    return f"the last good checkpoint {last} is kept" if last else "no checkpoint had been written yet"
