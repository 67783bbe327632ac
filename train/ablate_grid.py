"""The ablation's learning-rate grid and seeds: each method's rate picked on a validation split of the domain
that the reported held-out set never sees, and every reported change a mean over seeds.

Validation split: the domain's held-out tokens after the ones the report scores (the report reads the first
`eval_tokens` as consecutive windows, slm.train.pack.eval_sequences; the grid reads what follows), so choosing
the rate cannot tune it to the tokens the verdict is read from.

Seeds: each seed changes the data order and every random initialisation (LoRA's A matrices); the change of
a method is the mean over seeds with slm.stats.seed_interval (t over K seeds, never narrower than the token
s.e.), so the interval includes seed-to-seed spread.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

from slm.errors import SlmError
from slm.stats import Z95, seed_interval, significant

# a half-decade log grid around each method's default: ×1/3, ×1, ×3 (learning rates are searched on a log
# scale: Bengio 2012, "Practical recommendations for gradient-based training of deep architectures", §3.1.1)
GRID = (1 / 3, 1.0, 3.0)
# Each grid point is scored on the validation split's first VAL_TOKENS tokens (all of them when fewer): on the
# stdlib code set a per-token s.e. of ~0.03 nats at this size, and the points are compared on the same tokens
# (paired), so finer still; scoring all ~77k held-out tokens took ~10 min per point on 2 cores.
VAL_TOKENS = 8192


def check_grid(factors: list) -> None:
    for f in factors:
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not math.isfinite(f) or f <= 0:
            raise SlmError(f"--lr-grid {f!r}: every grid factor must be a positive number (a multiple of "
                           f"the method's default lr), e.g. --lr-grid 0.33,1,3")


def validation_split(data: str, domain: str, seq_len: int, eval_tokens: int):
    """The domain's held-out tokens after the reported ones (a Split), refused when too few remain."""
    # numpy/torch: deferred, heavy imports (the CLI imports this module for --help)
    import numpy as np

    from .pack import Split, open_data  # numpy: deferred with it

    split = open_data(data, "heldout")[domain]
    if split.kind != "text":
        raise SlmError(f"--lr-grid needs a text domain set; {domain!r} is {split.kind}")
    t_eff = min(seq_len, max(1, split.n_tokens - 1))
    start = -(-eval_tokens // t_eff) * t_eff + 1  # after the report's windows (each t_eff + 1 tokens long)
    left = split.n_tokens - start
    if left < seq_len + 1:  # at least one whole validation sequence; its s.e. says how well it ranks rates
        raise SlmError(f"--lr-grid: the held-out set {domain!r} has {split.n_tokens:,} tokens and the report "
                       f"reads the first {start - 1:,}; the grid needs ≥ {seq_len + 1} more for its "
                       "validation split: prepare the data with a larger --heldout or lower --eval-tokens")
    docs = np.concatenate([[0], split.docs[split.docs > start] - start]).astype(np.int64)
    mask = None if split.mask is None else split.mask[start:]
    return Split(f"{domain}-validation", split.kind, split.weight, split.tokens[start:], docs, mask)


def tune(runs: dict, factors: list, val, train_one, out: Path) -> dict:
    """Train every method at default × each factor (seed 0) into out/grid/, score each final model on the
    validation split, keep the lowest; the chosen run is moved to the method's own folder (it is that run),
    the others' weights are dropped. Returns {method: {"grid": [{lr, val_loss, val_se}], "chosen": lr}}."""
    # torch: deferred, a heavy import
    import torch

    from slm.io import load_model  # torch: deferred with it

    from .evaluate import perplexity  # torch: deferred with it

    res = {}
    for m, targs in runs.items():
        points = []
        for f in factors:
            lr = float(f"{targs.lr * f:.3g}")
            t = replace(targs, lr=lr, out=str(out / "grid" / f"{m}-lr{lr:g}"))
            done = train_one(t)
            model = load_model(Path(done["model"]), "float32", attn_implementation="sdpa")
            v = perplexity(model, {"val": val}, t.seq_len, min(val.n_tokens, VAL_TOKENS),
                           torch.device("cpu"))["val"]
            del model
            points.append({"lr": lr, "val_loss": v["loss"], "val_se": v["loss_se"], "tokens": v["tokens"],
                           "run": t.out})
        best = min(points, key=lambda p: p["val_loss"])
        for p in points:
            if p is best and not Path(targs.out).exists():
                Path(targs.out).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(p["run"], targs.out)  # the chosen seed-0 run is the method's run
            else:
                shutil.rmtree(p["run"], ignore_errors=True)
        res[m] = {"grid": points, "chosen": best["lr"], "val_tokens": best["tokens"]}
    shutil.rmtree(out / "grid", ignore_errors=True)
    return res


def seed_runs(targs, seeds: int) -> list:
    """The method's run per seed: seed 0 in its own folder, seed s in <folder>-seed<s>."""
    return [targs if s == 0 else replace(targs, seed=s, out=f"{targs.out}-seed{s}") for s in range(seeds)]


def over_seeds(per_seed: list[dict]) -> dict:
    """One loss change from K per-seed paired changes: the mean, its 95 % half-width from slm.stats
    (t over seeds, at least the token-level one), the s.e. that half-width implies, and each seed's value."""
    means, ses = [c["change"] for c in per_seed], [c["se"] for c in per_seed]
    mean, half = seed_interval(means, ses)
    k = len(per_seed)
    how = (per_seed[0]["se_how"] if k == 1 else
           f"{k} seeds: t over seeds, at least the paired token s.e. (slm.stats.seed_interval)")
    return {"change": mean, "se": (half or 0.0) / Z95, "ci95": half, "significant": significant(mean, half),
            "se_how": how, "seeds": means}
