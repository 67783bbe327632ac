"""Depth pruning by block influence (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More
Redundant Than You Expect", arXiv:2403.03853, Sec. 3).

Block influence of block i: BI_i = 1 − E_{X,t}[ cos(x_{i,t}, x_{i+1,t}) ], the mean over held-out tokens t of
the cosine between the hidden state entering block i and the one leaving it. A block that barely turns the
residual stream (BI ≈ 0 — e.g. a LLaMA Pro identity copy, whose o_proj/down_proj are zero) is removed first.
The K lowest-influence blocks are dropped through restack (streamed; per-layer config lists remapped; layer
indices reset; the surgery record gains a "prune" step), and held-out perplexity is measured before and after.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from slm.corpus import heldout_text
from slm.errors import SlmError
from slm.figure import Figure, setting
from slm.guard import check_output
from slm.io import load_model
from slm.report.render import Chart, Table, new_figure, render_report, svg_of  # matplotlib: deferred
from slm.score import Scored, log_softmax, paired, token_nll, token_stats
from slm.spec import load_spec
from slm.stats import ci95_se
from slm.surgery.report import _layer_chart
from slm.surgery.restack import restack

METHODS = ("block-influence",)


@dataclass
class PruneArgs:
    drop: int  # K: blocks removed (1 ≤ K < layers)
    by: str = "block-influence"  # ranking: ShortGPT's block influence (the only one so far)
    # held-out text file (default: slm.corpus.heldout_text(), never trained on by the demo)
    data: str | None = None
    tokens: int = 4096  # held-out tokens scored for influence and perplexity
    seq_len: int = 256  # window length of each forward pass
    dtype: str | None = None  # output dtype; None keeps the source dtype
    force: bool = False  # replace an existing output directory

    def __post_init__(self):
        if self.drop < 1:
            raise SlmError(f"--drop must be ≥ 1 (got {self.drop}): the number of blocks to remove")
        if self.by not in METHODS:
            raise SlmError(f"unknown --by {self.by!r}: choose one of {', '.join(METHODS)}")
        if self.seq_len < 8 or self.tokens < self.seq_len:
            raise SlmError(f"need seq_len ≥ 8 and tokens ≥ seq_len (got {self.seq_len}, {self.tokens})")
        if self.data and not Path(self.data).is_file():
            raise SlmError(f"--data file {self.data} not found: pass a UTF-8 text file")


def heldout_windows(model_dir: Path, args: PruneArgs, vocab: int) -> tuple[list[torch.Tensor], str]:
    """Token windows of the held-out text (and where they came from); a checkpoint without a tokenizer (tiny
    test models) gets fixed pseudo-random ids instead."""

    text = Path(args.data).read_text() if args.data else heldout_text()
    source = args.data or "slm.corpus.heldout_text()"
    if any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        from transformers import AutoTokenizer  # transformers: deferred, a heavy import

        ids = AutoTokenizer.from_pretrained(str(model_dir)).encode(text)
    else:
        ids = torch.randint(0, vocab, (args.tokens,), generator=torch.Generator().manual_seed(0)).tolist()
        source = "fixed pseudo-random ids (the checkpoint has no tokenizer)"
    ids = ids[:args.tokens]
    if len(ids) < args.seq_len:
        raise SlmError(f"the held-out text has {len(ids)} tokens, fewer than one window of {args.seq_len}: "
                       "pass a longer --data file")
    n = len(ids) // args.seq_len * args.seq_len
    return [torch.tensor([ids[i:i + args.seq_len]]) for i in range(0, n, args.seq_len)], source


def _hidden(x):
    return x[0] if isinstance(x, tuple) else x


def window_nll(model, ids: torch.Tensor) -> np.ndarray:
    """Per-token next-token NLL of one window (1 × T ids), through the one scorer's log-softmax."""
    logits = model(ids).logits[0].float().numpy()
    return token_nll([Scored(log_softmax(logits[:-1]), ids[0, 1:].numpy())])


@torch.no_grad()
def block_influence(model, windows: list[torch.Tensor]) -> tuple[list[float], np.ndarray]:
    """(BI of every block, every held-out token's NLL) over the windows, in one pass: forward hooks see each
    decoder layer's input and output hidden states; cosines are summed per token in float64."""
    layers = model.model.layers
    sums = [0.0] * len(layers)
    count = [0]
    nll = []

    def hook(i):
        def fn(module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            cos = torch.nn.functional.cosine_similarity(x_in.double(), _hidden(output).double(), dim=-1)
            sums[i] += float(cos.sum())
        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for ids in windows:
            nll.append(window_nll(model, ids))
            count[0] += ids.numel()
    finally:
        for h in handles:
            h.remove()
    return [1 - s / count[0] for s in sums], np.concatenate(nll)


@torch.no_grad()
def heldout_nll(model, windows: list[torch.Tensor]) -> np.ndarray:
    """Every held-out token's next-token NLL over the windows."""
    return np.concatenate([window_nll(model, ids) for ids in windows])


def choose_drops(influence: list[float], k: int) -> list[int]:
    """The k blocks of lowest influence (ties: the higher block first, as ShortGPT removes from the top),
    sorted."""
    order = sorted(range(len(influence)), key=lambda i: (influence[i], -i))
    return sorted(order[:k])


def prune(model: Path | str, out: Path | str, args: PruneArgs) -> dict:
    """Write `out` = `model` without its args.drop lowest-influence blocks (+ slm.json, report.html)."""
    model, out = Path(model), Path(out)
    n = load_spec(model).layers  # refuses non-Llama-family and incomplete configs in one line
    if args.drop >= n:
        raise SlmError(f"--drop {args.drop} leaves no blocks of the {n}: use --drop between 1 and {n - 1}")
    check_output(out, args.force, [model])  # before the long measurement
    m = load_model(model, "float32").eval()
    windows, source = heldout_windows(model, args, m.config.vocab_size)
    influence, nll_before = block_influence(m, windows)
    del m
    before = token_stats(nll_before)
    dropped = choose_drops(influence, args.drop)
    src = [i for i in range(n) if i not in set(dropped)]
    step = {"method": "prune", **asdict(args), "dropped_layers": dropped,
            "influences": [round(b, 6) for b in influence]}
    heldout = {"source": source, "tokens": before["tokens"], "windows": len(windows),
               "perplexity_before": before["ppl"], "loss_before": before["loss"],
               "loss_se_before": before["loss_se"]}

    def after(tmp: Path, result: dict) -> None:
        pruned = load_model(tmp, "float32").eval()
        nll_after = heldout_nll(pruned, windows)
        after_ = token_stats(nll_after)
        change = paired(nll_before, nll_after)
        heldout.update(perplexity_after=after_["ppl"], loss_after=after_["loss"],
                       loss_se_after=after_["loss_se"],
                       loss_change=change["change"], loss_change_se=change["se"])
        result.update({"dropped_layers": dropped, "influences": influence, "heldout": heldout})
        result["figures"] += prune_figures(dropped, heldout)

    return restack(model, out, src, [], step, kind="prune", zero_new=False, dtype=args.dtype,
                   force=args.force, after=after, report=write_prune_report)


def prune_figures(dropped: list[int], h: dict) -> list[Figure]:
    """The prune's own figures beside the surgery's: which blocks went, and what it cost on held-out text."""
    def ppl(name: str, label: str, value: float, loss_se: float) -> Figure:
        return Figure(name, label, value, "1", "lower", "quality", interval=ci95_se(loss_se * value),
                      n=h["tokens"], exact=True, key=True, source=h["source"],
                      note="± first order from the s.e. of the mean token loss")

    return [setting("dropped", "dropped layers", ", ".join(map(str, dropped))),
            setting("heldout.text", "held-out text", h["source"]),
            Figure("heldout.tokens", "held-out tokens scored", h["tokens"], "tokens", exact=True,
                   group="quality"),
            ppl("heldout.ppl_before", "held-out perplexity before pruning", h["perplexity_before"],
                h["loss_se_before"]),
            ppl("heldout.ppl_after", "held-out perplexity after pruning", h["perplexity_after"],
                h["loss_se_after"]),
            Figure("heldout.loss_change", "held-out loss change (pruned − source, same tokens)",
                   h["loss_change"],
                   "nats/token", "lower", "quality", interval=ci95_se(h["loss_change_se"]), n=h["tokens"],
                   source=h["source"], note="paired over the same tokens")]


def write_prune_report(out_dir: Path, kind: str, step: dict, result: dict) -> Path:
    """report.html of a prune: block influence per original block (dropped ones highlighted), perplexity
    before and after, and the layer map."""

    infl, dropped, h = result["influences"], set(result["dropped_layers"]), result["heldout"]
    fig, ax = new_figure(7.5, 3.0)
    ax.bar(range(len(infl)), infl, color=["#e07a2f" if i in dropped else "#4a78b5" for i in range(len(infl))])
    ax.set_xlabel("block (input model)")
    ax.set_ylabel("block influence 1 − cos(x_in, x_out)")
    ax.set_title("Block influence (orange: dropped)")
    how = f"measured on {h['tokens']} held-out tokens ({h['source']}), ShortGPT's BI (arXiv:2403.03853)"
    rows = [[i, b, "dropped" if i in dropped else "kept"] for i, b in enumerate(infl)]
    table = Table("Block influence", ["block", "influence", "fate"], rows, highlight=sorted(dropped))
    return render_report(Path(out_dir) / "report.html", "prune: block influence", kind, result["figures"],
                         [Chart("Block influence", svg_of(fig), how), _layer_chart(result["record"])],
                         [table], notes=[f"{k} = {v}" for k, v in step.items() if k != "influences"])

