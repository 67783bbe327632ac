"""Experiment trackers: the run's metrics mirrored to TensorBoard or Weights & Biases as they are produced.

The run's own metrics.jsonl, slm.json and report.html stay the source of truth; a tracker is a view for the
tools users already watch runs in. The loop calls `log(rec)` with each metrics line it writes (a training
step or a held-out evaluation) and `figures(...)` once with the run's figures: one explicit call per logged
step, no callbacks. TensorBoard is written by torch's own `SummaryWriter` (torch.utils.tensorboard, which
needs the `tensorboard` package); W&B by `wandb`, offline unless the user set it up (WANDB_MODE, WANDB_API_KEY
or a `wandb login` in ~/.netrc), so a run never uploads by surprise. Both are in the `track` extra.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import netrc
import os
from pathlib import Path

from slm.errors import SlmError
from slm.figure import Figure

TRACKERS = ("none", "tensorboard", "wandb")
# the package each tracker imports
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
# metrics-line keys → tracker tags (train/ group as HF Trainer's TensorBoard logs do)
STEP_KEYS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "tok_s": "train/tok_s",
             "mfu": "train/mfu", "step_s": "train/step_s"}


def require(report_to: str) -> None:
    """A one-line error for an unknown tracker or one whose package is missing (checked before any work)."""
    if report_to not in TRACKERS:
        raise SlmError(f"report_to={report_to!r}: use one of {', '.join(TRACKERS)}")
    pkg = PACKAGES.get(report_to)
    if pkg and importlib.util.find_spec(pkg) is None:
        raise SlmError(f"report_to={report_to} needs the {pkg} package: pip install 'slm-lab[track]' (or "
                       "report_to=none)")


def scalars(rec: dict) -> dict[str, float]:
    """The tracker tags and values of one metrics line: a step's loss, lr, grad norm, speed and MFU, or an
    evaluation's loss and perplexity per held-out set."""
    out = {tag: float(rec[k]) for k, tag in STEP_KEYS.items() if isinstance(rec.get(k), (int, float))}
    for name, v in (rec.get("eval") or {}).items():
        for k in ("loss", "ppl", "loss_se"):
            if isinstance(v.get(k), (int, float)):
                out[f"eval/{name}/{k}"] = float(v[k])
    return {k: v for k, v in out.items() if math.isfinite(v)}


class Tracker:
    """No tracker (report_to=none): every call does nothing."""

    def log(self, rec: dict) -> None:
        """One metrics line (with its "step")."""

    def figures(self, figures: list[Figure], step: int) -> None:
        """The run's numeric figures at `step`, under figures/<name>."""

    def close(self) -> None:
        pass


class TensorBoard(Tracker):
    def __init__(self, run: Path, resumed_step: int | None):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        # purge_step: on resume TensorBoard hides the events past the checkpoint, as metrics.jsonl drops them
        self.writer = SummaryWriter(str(run / "tensorboard"), purge_step=resumed_step)

    def log(self, rec: dict) -> None:
        for tag, v in scalars(rec).items():
            self.writer.add_scalar(tag, v, rec["step"])

    def figures(self, figures: list[Figure], step: int) -> None:
        for f in _numeric(figures):
            self.writer.add_scalar(f"figures/{f.name}", float(f.value), step)

    def close(self) -> None:
        self.writer.close()


class WandB(Tracker):
    def __init__(self, run: Path, config: dict, resumed_step: int | None):
        import wandb  # optional (the track extra)

        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")
        # an id from the run folder, so --resume continues the same W&B run
        self.run = wandb.init(dir=str(run), project=os.environ.get("WANDB_PROJECT", "slm-lab"),
                              name=run.name, id=_wandb_id(run), config=config, mode=mode,
                              resume="allow" if resumed_step is not None else None)

    def log(self, rec: dict) -> None:
        self.run.log(scalars(rec), step=rec["step"])

    def figures(self, figures: list[Figure], step: int) -> None:
        # the summary, not a step: W&B refuses steps lower than the last one logged
        self.run.summary.update({f"figures/{f.name}": float(f.value) for f in _numeric(figures)})

    def close(self) -> None:
        self.run.finish()


def open_tracker(report_to: str, run: Path, config: dict, resumed_step: int | None = None,
                 main: bool = True) -> Tracker:
    """The tracker `report_to` names, writing under the run folder (TensorBoard: run/tensorboard, W&B:
    run/wandb); only the main rank tracks."""
    require(report_to)
    if not main or report_to == "none":
        return Tracker()
    if report_to == "tensorboard":
        return TensorBoard(run, resumed_step)
    return WandB(run, config, resumed_step)


def _numeric(figures: list[Figure]):
    return [f for f in figures if isinstance(f.value, (int, float)) and not isinstance(f.value, bool)
            and math.isfinite(f.value)]


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _wandb_id(run: Path) -> str:
    """The run folder's name and a hash of its absolute path: stable across --resume, apart between two
    folders of one name; W&B ids take letters, digits, - and _ only."""
    path = Path(run).resolve()
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in path.name)[:48]
    return f"{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
