"""Packed sequences from prepared token shards: inputs, labels, position ids and document (segment) ids.

Documents never attend to each other: position ids restart at each document, the label that would cross a
boundary is masked (-100), and the attention mask is block-diagonal causal, B×1×T×T (position ids alone
do not isolate documents under sdpa or eager; the 4-D mask does, to ~1.5e-7).

Sampling is stateless: sequence i is a pure function of (seed, i), so the data position of a run is one
integer (sequences consumed) and resuming replays exactly the same batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slm.errors import SlmError
from slm.record import read_record

IGNORE = -100


@dataclass
class Split:
    """One source's split, memory-mapped."""

    name: str
    kind: str  # text | chat
    weight: float
    tokens: np.ndarray  # memmap of uint16/uint32
    docs: np.ndarray  # int64 offsets, n_docs + 1
    mask: np.ndarray | None  # uint8 assistant mask (chat) or None

    @property
    def n_tokens(self) -> int:
        return int(self.docs[-1])


def open_data(data_dir: Path | str, split: str) -> dict[str, Split]:
    """Every source of a prepared folder, one split of each."""
    d = Path(data_dir)
    rec = read_record(d) if d.is_dir() else None
    if not rec or rec.get("kind") != "data":
        raise SlmError(f"{d} is not a prepared data folder: run `slm data prepare {d} --tokenizer MODEL "
                       "--source NAME=PATH`")
    out = {}
    for name, meta in rec["result"]["sources"].items():
        folder = d / name
        docs = np.load(folder / f"{split}.docs.npy")
        n = int(docs[-1])
        tok = (np.memmap(folder / f"{split}.tokens.bin", dtype=meta["dtype"], mode="r", shape=(n,)) if n
               else np.zeros(0, np.uint16))
        mpath = folder / f"{split}.mask.bin"
        mask = (np.memmap(mpath, dtype=np.uint8, mode="r", shape=(n,)) if meta["kind"] == "chat" and n
                else None)
        out[name] = Split(name, meta["kind"], float(meta["weight"]), tok, docs, mask)
    return out


def data_vocab(data_dir: Path | str) -> int:
    return int(json.loads((Path(data_dir) / "slm.json").read_text())["result"]["vocab"])


# ---- one sequence ---------------------------------------------------------------------------------------
def label_window(tokens: np.ndarray, seg: np.ndarray, mask: np.ndarray | None) -> dict:
    """T+1 tokens with their document ids (and assistant mask) → one training sequence of T tokens.

    The label of position j is token j+1 when it belongs to the same document (and, for chat, is an
    assistant token); otherwise IGNORE. Position ids count from each document's first token in the window.
    """
    t = len(tokens) - 1
    inp = torch.from_numpy(tokens[:-1].astype(np.int64))
    lab = torch.from_numpy(tokens[1:].astype(np.int64))
    s = torch.from_numpy(seg.astype(np.int64))
    keep = s[1:] == s[:-1]
    if mask is not None:
        keep &= torch.from_numpy(mask[1:].astype(bool))
    lab = torch.where(keep, lab, torch.full_like(lab, IGNORE))
    seg_in = s[:-1]
    starts = torch.ones(t, dtype=torch.bool)
    starts[1:] = seg_in[1:] != seg_in[:-1]
    idx = torch.arange(t)
    first = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), 0).values
    return {"input_ids": inp, "labels": lab, "position_ids": idx - first, "segments": seg_in}


def window(split: Split, start: int, t: int) -> dict:
    """Tokens [start, start + t] of a split's stream, documents as they fall."""
    toks = np.asarray(split.tokens[start:start + t + 1])
    seg = np.searchsorted(split.docs, np.arange(start, start + t + 1), side="right") - 1
    mask = None if split.mask is None else np.asarray(split.mask[start:start + t + 1])
    return label_window(toks, seg, mask)


def packed_docs(split: Split, doc_ids: list[int], t: int, pad_id: int) -> dict:
    """Whole documents (each cut to t+1 tokens) laid end to end, padded to t+1 with a padding segment."""
    toks, seg, mask = [], [], []
    for k, d in enumerate(doc_ids):
        a, b = int(split.docs[d]), int(split.docs[d + 1])
        b = min(b, a + t + 1 - len(toks))
        toks += list(split.tokens[a:b])
        seg += [k] * (b - a)
        if split.mask is not None:
            mask += list(split.mask[a:b])
    n_pad = t + 1 - len(toks)
    toks += [pad_id] * n_pad
    seg += [len(doc_ids)] * n_pad  # padding is its own segment: nothing attends to it, its labels are IGNORE
    mask += [0] * n_pad
    return label_window(np.asarray(toks), np.asarray(seg),
                        np.asarray(mask, np.uint8) if split.mask is not None else None)


def pack_bins(split: Split, t: int, order: np.ndarray) -> list[list[int]]:
    """Greedy packing of whole documents (in `order`) into bins of t+1 tokens: the SFT layout."""
    lengths = np.minimum(np.diff(split.docs), t + 1)
    bins, cur, used = [], [], 0
    for d in order:
        n = int(lengths[d])
        if cur and used + n > t + 1:
            bins.append(cur)
            cur, used = [], 0
        cur.append(int(d))
        used += n
    if cur:
        bins.append(cur)
    return bins


# ---- the training stream ------------------------------------------------------------------------------
class Sampler:
    """Sequence i of the training stream = f(seed, i): source by mixture weight, then a random window (text:
    documents packed as they lie in the stream) or a random bin of whole documents (chat)."""

    def __init__(self, splits: dict[str, Split], seq_len: int, seed: int, weights: dict | None = None,
                 pad_id: int = 0):
        self.t, self.seed, self.pad_id = seq_len, seed, pad_id
        w = {n: (weights or {}).get(n, s.weight) for n, s in splits.items()}
        self.splits = [s for n, s in splits.items() if w[n] > 0 and s.n_tokens > 0]
        if not self.splits:
            raise SlmError("no training tokens: every source is empty or has weight 0; "
                           "check `slm data prepare` output")
        p = np.array([w[s.name] for s in self.splits], dtype=np.float64)
        self.p = p / p.sum()
        self.bins = {}
        for s in self.splits:
            if s.kind == "chat":
                order = np.random.default_rng([seed, 7]).permutation(len(s.docs) - 1)
                self.bins[s.name] = pack_bins(s, seq_len, order)
            elif s.n_tokens < seq_len + 1:
                raise SlmError(f"source {s.name} has {s.n_tokens} training tokens, fewer than seq_len + 1 = "
                               f"{seq_len + 1}: add data or lower seq_len")

    def sequence(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        s = self.splits[int(rng.choice(len(self.splits), p=self.p))]
        if s.kind == "chat":
            bins = self.bins[s.name]
            return packed_docs(s, bins[int(rng.integers(len(bins)))], self.t, self.pad_id)
        return window(s, int(rng.integers(0, s.n_tokens - self.t)), self.t)

    def batch(self, indices) -> dict:
        return collate([self.sequence(int(i)) for i in indices])


def eval_sequences(split: Split, t: int, max_tokens: int, pad_id: int = 0) -> list[dict]:
    """A held-out split as consecutive non-overlapping sequences (deterministic), about max_tokens in all."""
    n = -(-max_tokens // t)
    if split.kind == "chat":
        return [packed_docs(split, b, t, pad_id)
                for b in pack_bins(split, t, np.arange(len(split.docs) - 1))[:n]]
    if split.n_tokens < 2:
        return []
    t_eff = min(t, split.n_tokens - 1)
    return [window(split, k * t_eff, t_eff) for k in range(min(n, (split.n_tokens - 1) // t_eff))]


def collate(seqs: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in seqs]) for k in seqs[0]}


def block_causal_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive B×1×T×T mask: 0 where query i may see key j (same document, j ≤ i), dtype-min elsewhere.
    Additive works with both sdpa and eager (eager takes additive only)."""
    t = segments.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    zero = torch.zeros((), dtype=dtype, device=segments.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]
