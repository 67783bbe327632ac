"""The one loss / perplexity / KL-divergence scorer: which tokens count, and what their losses add up to.

Every perplexity in the lab goes through here — training's held-out evaluation and the probe (train/), the
pruner's before/after (slm/surgery/prune.py), export validation and the int4 search (quant/), and the
profiler's quantization sweep — so a perplexity means the same thing on every page.

Two halves. `token_stats` turns the per-token negative log-likelihoods of any scorer into the figures
reported (mean loss, its standard error over tokens, perplexity, tokens), and `paired` compares two models
scored on the same tokens (the s.e. of the per-token differences, far tighter than two independent s.e.s).

The text's token ids are cut into windows that each start from an empty cache (as llama-perplexity does), and
a mode says which positions of a window count:

- `all`: every position of non-overlapping n_ctx windows over the whole text (the last may be shorter).
  Perplexity scores every next token inside its window; KLD compares every position's next-token distribution.
  Export validation uses it: the held-out passage is short, so every token counts.
- `second_half`: `chunks` full windows of n_ctx tokens, only the second half of each scored (perplexity and
  KLD), so every scored token has at least n_ctx/2 tokens of context — llama-perplexity's default
  (perplexity.cpp: `first = n_ctx/2`), used with `--kl-divergence`. The profiler's quantization sweep uses it.

KLD is KL(P_ref ‖ P_test) per position, summed over the vocabulary (llama-perplexity --kl-divergence), with
its mean, 99th percentile and maximum, and how often both pick the same top token. Every result carries its
mode and `what`, a phrase the reports print beside the figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from slm.errors import SlmError

MODES = ("all", "second_half")


@dataclass(frozen=True)
class Scoring:
    """Which tokens a perplexity or KLD figure is computed over."""

    mode: str = "all"  # all | second_half (see the module docstring)
    n_ctx: int = 256  # window length in tokens
    # second_half: exactly this many windows; all: at most this many (None: the whole text)
    chunks: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise SlmError(f"unknown scoring mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.n_ctx < 16:
            raise SlmError(f"scoring window of {self.n_ctx} tokens is too short: use at least 16")
        if self.mode == "second_half" and not self.chunks:
            raise SlmError("second_half scoring needs a number of chunks ≥ 1")

    @property
    def what(self) -> str:
        if self.mode == "all":
            return f"every token of non-overlapping {self.n_ctx}-token windows"
        return (f"second half of each of {self.chunks} chunks of {self.n_ctx} tokens "
                "(llama-perplexity's default)")

    def to_dict(self) -> dict:
        return {**asdict(self), "what": self.what}

    def windows(self, ids: list[int]) -> list[list[int]]:
        """The windows of `ids` this mode scores."""
        n = self.n_ctx
        if self.mode == "second_half":
            if len(ids) < n * self.chunks:
                raise SlmError(f"held-out text has {len(ids)} tokens, fewer than {n}×{self.chunks}: pass a "
                               "longer text or fewer chunks")
            return [ids[i * n:(i + 1) * n] for i in range(self.chunks)]
        out = [ids[i:i + n] for i in range(0, len(ids) - 1, n) if len(ids[i:i + n]) > 1]
        return out[:self.chunks] if self.chunks else out


@dataclass
class Scored:
    """The log-probabilities of one window at the positions a mode compares, and the next tokens it scores
    (targets[j] is predicted by rows[j]; rows may have one more position than targets, see `all`)."""

    rows: np.ndarray  # positions × vocab, float32 log-softmax
    targets: np.ndarray  # the next-token ids scored


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis, computed in float64 and kept as float32 (half the memory)."""
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def score(logits_fn: Callable[[list[int]], np.ndarray], ids: list[int], scoring: Scoring) -> list[Scored]:
    """Run every window of `ids` through logits_fn(window ids) → (len × vocab) logits and keep what the mode
    scores."""
    out = []
    for w in scoring.windows(list(ids)):
        if scoring.mode == "all":
            out.append(Scored(log_softmax(logits_fn(w)), np.asarray(w[1:])))
        else:  # predictions for tokens half … n-1; the log-softmax of only those rows
            half = len(w) // 2
            out.append(Scored(log_softmax(logits_fn(w)[half - 1:-1]), np.asarray(w[half:])))
    return out


def token_nll(scored: list[Scored]) -> np.ndarray:
    """The negative log-likelihood of every scored next token (float64)."""
    if not scored:
        return np.zeros(0)
    return np.concatenate([-s.rows[np.arange(len(s.targets)), s.targets].astype(np.float64) for s in scored])


def token_stats(nll) -> dict:
    """{"loss", "loss_se", "ppl", "tokens"} of per-token losses: the mean, its standard error (tokens taken as
    independent — a lower bound, as neighbouring tokens correlate), exp(mean) and the count."""
    x = np.asarray(nll, dtype=np.float64).ravel()
    n = int(x.size)
    mean = float(x.mean()) if n else 0.0
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"loss": mean, "loss_se": se, "ppl": math.exp(mean), "tokens": n}


def paired(a, b) -> dict:
    """Change b − a of the mean loss of two models over the SAME tokens, with the s.e. of the per-token
    differences: {"change", "se", "se_how"}. Arrays of different lengths are not paired: the s.e. is then the
    independent bound √(se_a² + se_b²) (conservative)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    d = float(b.mean() - a.mean())
    if a.size == b.size and a.size > 1:
        return {"change": d, "se": float((b - a).std(ddof=1) / math.sqrt(a.size)), "se_how": "paired"}
    sa, sb = (token_stats(x)["loss_se"] for x in (a, b))
    return {"change": d, "se": math.hypot(sa, sb), "se_how": "independent (conservative)"}


def perplexity(scored: list[Scored], scoring: Scoring) -> dict:
    """exp(mean negative log-likelihood) of the scored next tokens, with the loss's s.e. over tokens."""
    st = token_stats(token_nll(scored))
    return {"perplexity": st["ppl"], "nll": st["loss"], "nll_se": st["loss_se"],
            "tokens_scored": st["tokens"], "mode": scoring.mode, "n_ctx": scoring.n_ctx}


def kld(ref: list[Scored], test: list[Scored], scoring: Scoring) -> dict:
    """KL(P_ref ‖ P_test) per compared position: mean (with its s.e. over positions), 99th percentile, max;
    top-1 agreement."""
    kl, same = [], []
    for a, b in zip(ref, test):
        n = min(len(a.rows), len(b.rows))
        a64, b64 = a.rows[:n].astype(np.float64), b.rows[:n].astype(np.float64)
        kl.append((np.exp(a64) * (a64 - b64)).sum(-1))
        same.append(a.rows[:n].argmax(-1) == b.rows[:n].argmax(-1))
    k, s = np.concatenate(kl), np.concatenate(same)
    # s.e. over positions taken as independent: a lower bound, as in token_stats
    se = float(k.std(ddof=1) / math.sqrt(k.size)) if k.size > 1 else float("nan")
    return {"kld_mean": float(k.mean()), "kld_se": se, "kld_p99": float(np.percentile(k, 99)),
            "kld_max": float(k.max()),
            "top1_agree": float(s.mean()), "positions": int(k.size), "mode": scoring.mode,
            "n_ctx": scoring.n_ctx}
