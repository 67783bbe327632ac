"""Held-out perplexity on any number of sets, and forgetting (OP, BWT) over a sequence of stages.

Perplexity = exp(mean next-token negative log-likelihood) over the held-out tokens of a set, packed and
masked exactly as in training (documents isolated; chat sets score assistant tokens only).

Forgetting, as in LLaMA Pro's ablation (after Lopez-Paz & Ranzato 2017, GEM): R[i][j] = score on task j after
stage i, where a higher score is better. Here the score is −loss (nats/token). OP = mean_j R[last][j];
BWT = mean over tasks j learned before the last stage of (R[last][j] − R[stage that learned j][j]);
negative BWT = forgetting.

With `probe="instruct"` the instruction-following probe (probe.py) is one more column, `instruct-probe`: its
reference is the first model's own greedy answers, its loss (± standard error over tokens) enters the score
matrix, and it counts as learned by the first stage, so OP/BWT over several stages include it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from slm.errors import SlmError
from slm.figure import Figure
from slm.guard import atomic_dir, guard_output
from slm.record import write_record
from slm.report.render import Table, render_report
from slm.score import token_stats
from slm.stats import ci95_se

from .pack import IGNORE, block_causal_mask, collate, eval_sequences, open_data
from .probe import PROBE_SET, probe_figures

if TYPE_CHECKING:
    from slm.report.render import Table


def token_loss(model, batch: dict, device: torch.device, use_mask: bool,
               autocast: bool) -> tuple[torch.Tensor, int, float, torch.Tensor]:
    """(sum of next-token cross-entropy over labelled tokens, number of labelled tokens, sum of squared token
    losses — for the standard error, and the labelled tokens' losses themselves — for paired comparisons)."""
    ids = batch["input_ids"].to(device)
    kw = {"position_ids": batch["position_ids"].to(device)}
    if use_mask:
        kw["attention_mask"] = block_causal_mask(batch["segments"].to(device),
                                                 torch.bfloat16 if autocast else torch.float32)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids, **kw).logits
    labels = batch["labels"].to(device)
    losses = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                             reduction="none")
    kept = losses[labels.flatten() != IGNORE].double().cpu()
    return losses.sum(), int(kept.numel()), float(kept.square().sum()), kept


def heldout_sets(data: Path | str, names: list[str], option: str) -> dict:
    """The held-out splits of a prepared data folder, narrowed to `names` (all of them when empty); a name
    that is not a set is refused, naming the `option` it came from (the loop's eval_sets, slm eval's
    --sets)."""
    splits = open_data(data, "heldout")
    unknown = sorted(set(names) - set(splits))
    if unknown:
        raise SlmError(f"{option} names {unknown[0]!r}, not a held-out set of {data}: choose from "
                       f"{sorted(splits)}")
    return {k: splits[k] for k in names} if names else splits


@torch.no_grad()
def perplexity(model, splits: dict, seq_len: int, max_tokens: int, device: torch.device, micro_batch: int = 1,
               use_mask: bool = True, autocast: bool = False, keep_tokens: bool = False) -> dict:
    """{set name: {"loss", "ppl", "tokens", "loss_se"}} on the first ~max_tokens held-out tokens of each set;
    loss_se is the standard error of the mean token loss (token losses taken as independent: a lower
    bound)."""
    was_training = model.training
    model.eval()
    out = {}
    for name, split in splits.items():
        seqs = eval_sequences(split, seq_len, max_tokens)
        kept = [token_loss(model, collate(seqs[k:k + micro_batch]), device, use_mask, autocast)[3]
                for k in range(0, len(seqs), micro_batch)]
        tokens = torch.cat(kept).numpy() if kept else np.zeros(0)
        if tokens.size:
            st = token_stats(tokens)
            out[name] = {"loss": st["loss"], "ppl": st["ppl"], "tokens": st["tokens"],
                         "loss_se": st["loss_se"]}
            if keep_tokens:
                # in memory only (never written): paired differences between models on the same tokens
                out[name]["_tokens"] = tokens
    model.train(was_training)
    return out


@dataclass
class EvalArgs:
    models: list  # stage checkpoints in order (HF folders, checkpoint folders or run folders)
    data: str = ""  # prepared data folder (its held-out splits are the sets); "" = the probe alone
    sets: list = field(default_factory=list)  # set names (default: every source)
    tasks: list = field(default_factory=list)  # the task each stage learned (one per model; "" = none)
    seq_len: int = 512  # tokens per evaluation sequence
    tokens: int = 16384  # held-out tokens per set
    micro_batch: int = 4  # sequences per forward pass
    device: str = "auto"  # auto | cpu | cuda
    probe: str = ""  # "" | instruct: the instruction-following probe (reference = the first model's answers)
    probe_prompts: int = 80  # held-out probe prompts (0 = all)

    def __post_init__(self):
        if not self.models:
            raise SlmError("slm eval needs at least one model")
        if self.probe not in ("", "instruct"):
            raise SlmError(f"--probe {self.probe!r} is not a probe: use --probe instruct")
        if not self.data and not self.probe:
            raise SlmError("slm eval needs --data (held-out sets), --probe instruct, or both")
        if self.tasks and len(self.tasks) != len(self.models):
            raise SlmError(f"--tasks names {len(self.tasks)} tasks for {len(self.models)} models: give one "
                           "per model")
        if self.seq_len < 2 or self.tokens < 1 or self.micro_batch < 1:
            raise SlmError("seq_len ≥ 2, tokens ≥ 1 and micro_batch ≥ 1 are needed")


def evaluate(args: EvalArgs, keep_tokens: bool = False) -> dict:
    """Perplexity of every model on every set, and OP/BWT when tasks are given. Returns the result dict; with
    keep_tokens every row's sets also hold `_tokens`, the per-token losses (numpy, in memory: strip before
    writing)."""
    from slm.io import load_model  # torch: deferred, a heavy import

    from .checkpoint import resolve_init  # torch: deferred, a heavy import

    splits = heldout_sets(args.data, args.sets, "--sets") if args.data else {}
    if args.data and not any(s.n_tokens for s in splits.values()):
        raise SlmError(f"the held-out sets of {args.data} are empty: prepare the data with --heldout > 0")
    dirs = [resolve_init(Path(m), "model") for m in args.models]
    if args.probe:  # every model's tokenizer and chat template, before the long part
        from .probe import chat_tokenizer  # torch: deferred, a heavy import

        for d in dirs:
            chat_tokenizer(d)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    rows, reference = [], None
    for d in dirs:
        model = load_model(d, "float32", attn_implementation="sdpa").to(device)
        rows.append(perplexity(model, splits, args.seq_len, args.tokens, device, args.micro_batch,
                               autocast=device.type == "cuda", keep_tokens=keep_tokens))
        if args.probe:
            reference = _probe_into(rows[-1], model, d, reference, args, device, keep_tokens)
        del model
    names = list(splits) + ([PROBE_SET] if args.probe else [])
    result = {"models": [str(d) for d in dirs], "sets": names, "matrix": rows}
    if args.tasks or (args.probe and len(dirs) > 1):
        tasks = args.tasks or [""] * len(dirs)
        also = {PROBE_SET: 0} if args.probe and PROBE_SET not in tasks else {}
        result["forgetting"] = forgetting([{k: -v["loss"] for k, v in r.items()} for r in rows], tasks, also)
    return result


def _probe_into(row: dict, model, model_dir: Path, reference: dict | None, args: EvalArgs, device,
                keep_tokens: bool = False) -> dict:
    """Add the probe's figures to `row` under PROBE_SET; the first model's answers become the reference."""
    from .probe import ProbeArgs, chat_tokenizer, make_reference, score  # torch: deferred, a heavy import

    pargs = ProbeArgs(prompts=args.probe_prompts, device=str(device))
    tok = chat_tokenizer(model_dir)
    answers = None
    if reference is None:
        reference, answers = make_reference(model, tok, pargs, device, str(model_dir))
    row[PROBE_SET] = score(model, tok, reference, pargs, device, answers, keep_tokens)
    return reference


def forgetting(scores: list[dict], tasks: list[str], also: dict | None = None) -> dict:
    """OP and BWT from a stage × task score matrix (higher is better). tasks[i] = the task stage i learned;
    `also` maps further tasks to the stage that learned them (the probe: stage 0)."""
    last = scores[-1]
    learned = {**(also or {}), **{t: i for i, t in enumerate(tasks) if t}}
    op = sum(last.values()) / len(last)
    earlier = [t for t, i in learned.items() if i < len(scores) - 1 and t in last]
    bwt = sum(last[t] - scores[learned[t]][t] for t in earlier) / len(earlier) if earlier else 0.0
    return {"op": op, "bwt": bwt, "score": "−loss (nats/token)", "earlier_tasks": earlier}


def run_eval(args: EvalArgs, out: Path | None = None, force: bool = False) -> dict:
    """`slm eval`: evaluate, and with `out` write slm.json + report.html there — the output checked (never one
    of the models or the data, even with force) and locked before the long evaluation."""
    if out is None:
        return evaluate(args)

    with guard_output(out, [*args.models, args.data or None], force):
        result = evaluate(args)
        write_eval(out, args, result, force)
    return result


def write_eval(out: Path, args: EvalArgs, result: dict, force: bool = False) -> Path:
    """slm.json + report.html (perplexity matrix and, with tasks, OP/BWT) into `out`."""


    names = display_names(result["models"])
    figures = eval_figures(result, names)
    sets = result["sets"]
    rows = [[n] + [_ppl_text(row.get(k)) for k in sets] for n, row in zip(names, result["matrix"])]
    tables = [Table("Held-out perplexity (stage × set), ± 95 % interval", ["model"] + sets, rows,
                    note=f"{args.tokens} tokens per set, seq_len {args.seq_len}, documents isolated; ± first "
                         "order from the s.e. of the mean token loss (tokens taken as independent)")]
    if args.probe:
        tables.append(probe_table(result, names))
    with atomic_dir(out, force, [*args.models, args.data or None]) as tmp:  # never over a model or the data
        write_record(tmp, "eval", asdict(args), {}, {**result, "names": names}, figures=figures)
        render_report(tmp / "report.html", "eval: held-out perplexity", "eval", figures, [], tables,
                      notes=["score for OP/BWT = −loss (nats/token); BWT < 0 means forgetting"])
    return out


def _ppl_text(v: dict | None) -> str:
    if not v:
        return "–"
    return f"{v['ppl']:.4g} ± {ci95_se(v['loss_se'] * v['ppl']):.2g}"


def eval_figures(result: dict, names: list[str]) -> list[Figure]:
    """Each model's perplexity on each set (± 95 %), its probe scores, and OP/BWT beside them."""
    out = []
    for n, row in zip(names, result["matrix"]):
        for k, v in row.items():
            if k == PROBE_SET:
                out += probe_figures(v, f"{n}.probe.", f"{n}: ")
                continue
            out.append(Figure(f"{n}.{k}.ppl", f"{n}: perplexity on {k}", v["ppl"], "1", "lower", "quality",
                              interval=ci95_se(v["loss_se"] * v["ppl"]), n=v["tokens"], exact=True, key=True,
                              note="± first order from the s.e. of the mean token loss"))
    f = result.get("forgetting")
    if f:
        out += [Figure("OP", "overall performance (OP: mean −loss over the sets after the last stage)",
                       f["op"], "nats/token", "higher", "forgetting", exact=True),
                Figure("BWT", "backward transfer (BWT: mean change of earlier tasks' −loss; negative = "
                              "forgetting)",
                       f["bwt"], "nats/token", "higher", "forgetting", exact=True,
                       note="an average over sets: read it beside each set's own change")]
    return out


def display_names(models: list[str]) -> list[str]:
    """Each model's display name (_short), made unique by its parent folders where two would read alike."""
    names = [_short(m) for m in models]
    depth = 1
    while len(set(names)) < len(names) and depth < 8:
        dup = {n for n in names if names.count(n) > 1}
        names = ["/".join(Path(m).parts[-(depth + 1):]) if n in dup else n for n, m in zip(names, models)]
        depth += 1
    return names


def probe_table(result: dict, names: list[str]) -> Table:
    """The probe's figures per stage, each with its uncertainty."""

    def pct(r: dict) -> str:
        return (f"{100 * r['rate']:.1f} % [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}] "
                f"({r['k']}/{r['n']})")

    rows = [[m, f"{p['loss']:.4f} ± {p['loss_se']:.4f}", pct(p["exact"]), pct(p["extract"]),
             pct(p["ended"])]
            for m, row in zip(names, result["matrix"]) if (p := row.get(PROBE_SET))]
    return Table("Instruction probe (held-out chat prompts; reference = the first model's greedy answers)",
                 ["model", "loss of reference answers (nats/token) ± s.e.", "exact match [Wilson 95 % CI]",
                  "answer in first line [CI]", "ends its turn [CI]"], rows,
                 note="loss: prompt tokens masked, s.e. over answer tokens; exact: normalised case, "
                      "punctuation, articles, numbers; ends its turn: end-of-turn token within the "
                      "generation budget")


def _short(model: str) -> str:
    """A model's display name: its folder, or run/folder for a run's `final` or a checkpoint's `model`."""
    p = Path(model)
    if p.name == "final":  # <run>/final
        return f"{p.parent.name}/final"
    if p.name == "model" and p.parent.parent.name == "checkpoints":  # <run>/checkpoints/<step>/model
        return f"{p.parent.parent.parent.name}/{p.parent.name}"
    return p.name
