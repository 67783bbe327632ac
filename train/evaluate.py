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

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slm.errors import SlmError
from slm.score import paired, token_stats
from slm.stats import ci95_se, mcnemar, significant

from .humaneval import HumanEvalArgs, check_tokenizer, gguf_humaneval, humaneval
from .ifeval import IFEvalArgs, ifeval
from .lmeval import LmEvalArgs, task_manager
from .lmeval import run as run_lm_eval
from .pack import IGNORE, block_causal_mask, collate, eval_sequences, open_data
from .probe import PROBE_SET, chat_tokenizer

HUMANEVAL_SET = "humaneval"  # slm.train.humaneval's column (that module imports the harness lazily)
IFEVAL_SET = "ifeval"  # slm.train.ifeval's column
LMEVAL_KEY = "lm_eval"  # slm.train.lmeval's results in a row (per task and metric, not a set)


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
    humaneval: str = ""  # "" | loss (canonical-solution loss) | pass (and greedy pass@1, executed)
    humaneval_problems: int = 0  # the first N HumanEval problems (0 = all 164)
    ifeval: int = 0  # prompts of the IFEval-verified probe (slm.train.ifeval; 0 = off)
    lm_eval: list = field(default_factory=list)  # lm-evaluation-harness tasks (slm.train.lmeval; [] = off)
    lm_eval_include: str = ""  # a folder of extra lm-eval task YAMLs (local data)
    lm_eval_limit: int = 0  # documents per lm-eval task (0 = all)
    progress: bool = True  # progress bars of the benchmarks

    def __post_init__(self):
        if not self.models:
            raise SlmError("slm eval needs at least one model")
        if self.probe not in ("", "instruct"):
            raise SlmError(f"--probe {self.probe!r} is not a probe: use --probe instruct")
        if self.humaneval:
            HumanEvalArgs(mode=self.humaneval, problems=self.humaneval_problems)  # its own checks
        if self.ifeval < 0:
            raise SlmError(f"--ifeval {self.ifeval}: the number of prompts must be ≥ 0 (0 = off)")
        if not (self.data or self.probe or self.humaneval or self.ifeval or self.lm_eval):
            raise SlmError("slm eval needs --data (held-out sets), --probe instruct, --humaneval, --ifeval, "
                           "or some of them")
        if self.tasks and len(self.tasks) != len(self.models):
            raise SlmError(f"--tasks names {len(self.tasks)} tasks for {len(self.models)} models: give one "
                           "per model")
        if self.seq_len < 2 or self.tokens < 1 or self.micro_batch < 1:
            raise SlmError("seq_len ≥ 2, tokens ≥ 1 and micro_batch ≥ 1 are needed")


def evaluate(args: EvalArgs, keep_tokens: bool = False, open_gguf=None) -> dict:
    """Perplexity of every model on every set, and OP/BWT when tasks are given. Returns the result dict; with
    keep_tokens every row's sets also hold `_tokens`, the per-token losses (numpy, in memory: strip before
    writing). A model that is a .gguf file is scored on HumanEval through llama.cpp: `open_gguf(path,
    n_ctx)` opens it (slm.quant's wrapper, handed in by the CLI)."""
    from slm.io import load_model  # torch: deferred, a heavy import

    from .checkpoint import resolve_init  # torch: deferred, a heavy import

    splits = heldout_sets(args.data, args.sets, "--sets") if args.data else {}
    if args.data and not any(s.n_tokens for s in splits.values()):
        raise SlmError(f"the held-out sets of {args.data} are empty: prepare the data with --heldout > 0")
    ggufs = {str(Path(m)) for m in args.models if str(m).endswith(".gguf")}
    _check_ggufs(ggufs, args, open_gguf)
    dirs = [Path(m) if str(Path(m)) in ggufs else resolve_init(Path(m), "model") for m in args.models]
    hf = [d for d in dirs if str(d) not in ggufs]
    if args.humaneval:
        for d in hf:
            check_tokenizer(d)
    if args.probe or args.ifeval:  # every model's tokenizer and chat template, before the long part
        for d in hf:
            chat_tokenizer(d)
    tm = lm_args = None
    if args.lm_eval:  # every task name checked before any model is loaded
        lm_args = LmEvalArgs(tasks=args.lm_eval, include=args.lm_eval_include, limit=args.lm_eval_limit)
        tm = task_manager(lm_args)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    rows, reference = [], None
    for d in dirs:
        if str(d) in ggufs:
            with open_gguf(d, GGUF_CTX) as llm:
                rows.append({HUMANEVAL_SET: gguf_humaneval(llm, _humaneval_args(args), d.name)})
            continue
        model = load_model(d, "float32", attn_implementation="sdpa").to(device)
        rows.append(perplexity(model, splits, args.seq_len, args.tokens, device, args.micro_batch,
                               autocast=device.type == "cuda", keep_tokens=True))
        if args.probe:
            reference = _probe_into(rows[-1], model, d, reference, args, device, True)
        if args.humaneval:
            rows[-1][HUMANEVAL_SET] = _humaneval(model, d, args, device)
        if args.ifeval:
            rows[-1][IFEVAL_SET] = ifeval(model, chat_tokenizer(d), IFEvalArgs(prompts=args.ifeval), device)
        if lm_args:
            from transformers import AutoTokenizer  # transformers: deferred, a heavy import
            rows[-1][LMEVAL_KEY] = run_lm_eval(model, AutoTokenizer.from_pretrained(str(d)), lm_args, tm)
        del model
    names = (list(splits) + ([PROBE_SET] if args.probe else []) + ([HUMANEVAL_SET] if args.humaneval else [])
             + ([IFEVAL_SET] if args.ifeval else []))
    result = {"models": [str(d) for d in dirs], "sets": names, "matrix": rows,
              "changes": [changes(rows[0], r) for r in rows[1:]]}
    if args.tasks or ((args.probe or args.humaneval) and len(dirs) > 1):  # sets scored by a loss
        tasks = args.tasks or [""] * len(dirs)
        also = {k: 0 for k in (PROBE_SET, HUMANEVAL_SET) if k in names and k not in tasks}
        scores = [{k: -v["loss"] for k, v in r.items() if "loss" in v} for r in rows]
        result["forgetting"] = forgetting(scores, tasks, also, rows)
    if not keep_tokens:
        result["matrix"] = [public(r) for r in rows]
    return result


def loss_change(a: dict, b: dict) -> dict:
    """Loss change b − a (nats/token), its standard error and whether its 95 % interval excludes 0
    (slm.stats). Both models are scored on the same tokens, so the s.e. is the paired one — of the per-token
    differences (slm.score.paired); √(se_a² + se_b²) would treat two highly correlated estimates as
    independent and call real changes noise. Without per-token losses it falls back to that conservative
    bound, and says which it used."""
    ta, tb = a.get("_tokens"), b.get("_tokens")
    if ta is not None and tb is not None and len(ta) == len(tb) > 1:
        p = paired(ta, tb)
        d, se, how = b["loss"] - a["loss"], p["se"], p["se_how"]
    else:
        d = b["loss"] - a["loss"]
        se, how = math.hypot(a.get("loss_se") or 0.0, b.get("loss_se") or 0.0), "independent (conservative)"
    return {"change": d, "se": se, "significant": significant(d, ci95_se(se)), "se_how": how}


def flips(a: list, b: list) -> dict:
    """Per-item outcomes of two stages on the same items (1 = passed): how many went 1→0 (lost) and 0→1
    (gained), and the exact McNemar p-value of the asymmetry — forgetting counted per sample, as Harmon et al.
    (2025, "Mapping Post-Training Forgetting in Language Models at Scale") count it."""
    if len(a) != len(b):
        raise SlmError(f"flips need the same items in both stages ({len(a)} vs {len(b)})")
    lost = sum(1 for x, y in zip(a, b) if x and not y)
    gained = sum(1 for x, y in zip(a, b) if y and not x)
    n = len(a)
    # the paired change of the pass rate: mean of the per-item differences ± their s.e. (slm.stats)
    d = [int(bool(y)) - int(bool(x)) for x, y in zip(a, b)]
    mean = sum(d) / n if n else 0.0
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else float("nan")
    return {"lost": lost, "gained": gained, "n": n, "p": mcnemar(lost, gained), "change": mean, "se": se,
            "se_how": "paired over items"}


def changes(row0: dict, row: dict) -> dict:
    """Every set's loss change from row0 to row (paired), and for sets scored per item (the probe's answers,
    benchmarks) the items that flipped between them."""
    out = {k: loss_change(row0[k], v) for k, v in row.items() if k in row0 and "loss" in v}
    for k, v in row.items():
        items0, items = (row0.get(k) or {}).get("items"), v.get("items") if isinstance(v, dict) else None
        if items0 and items:
            out.setdefault(k, {})["flips"] = {m: flips(items0[m], items[m]) for m in items if m in items0}
    return out


def public(row: dict) -> dict:
    """A result row without its in-memory per-token losses (what slm.json and reports get)."""
    return {k: {x: y for x, y in v.items() if not x.startswith("_")} if isinstance(v, dict) else v
            for k, v in row.items()}


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


GGUF_CTX = 2048  # llama.cpp context for HumanEval: the longest prompt + solution is ~700 tokens, + 384 new


def _check_ggufs(ggufs: set, args: EvalArgs, open_gguf) -> None:
    """A GGUF is scored on HumanEval only; the other measures need the HF model (its torch forward)."""
    if not ggufs:
        return
    if open_gguf is None:
        raise SlmError("a GGUF model is evaluated through `slm eval` (it opens llama.cpp): pass an HF folder "
                       "here")
    if not args.humaneval or args.data or args.probe or args.ifeval or args.lm_eval:
        raise SlmError(f"{sorted(ggufs)[0]}: a GGUF is scored on --humaneval alone (held-out perplexity, "
                       "the probe, IFEval and lm-eval need an HF folder): pass --humaneval loss|pass and "
                       "nothing else")
    for g in ggufs:
        if not Path(g).is_file():
            raise SlmError(f"model {g} not found: check the path")


def _humaneval_args(args: EvalArgs) -> HumanEvalArgs:
    return HumanEvalArgs(mode=args.humaneval, problems=args.humaneval_problems, progress=args.progress)


def _humaneval(model, model_dir: Path, args: EvalArgs, device) -> dict:
    from transformers import AutoTokenizer  # transformers: deferred, a heavy import

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return humaneval(model, tok, _humaneval_args(args), device, model_dir.name)


def forgetting(scores: list[dict], tasks: list[str], also: dict | None = None,
               rows: list[dict] | None = None) -> dict:
    """OP and BWT from a stage × task score matrix (higher is better). tasks[i] = the task stage i learned;
    `also` maps further tasks to the stage that learned them (the probe: stage 0). With the evaluation `rows`
    (per-token losses kept), each earlier task's own change is given too (`per_set`: the score change from the
    stage that learned it to the last, ± its paired s.e.): BWT averages them, so it is read beside them."""
    last = scores[-1]
    learned = {**(also or {}), **{t: i for i, t in enumerate(tasks) if t}}
    op = sum(last.values()) / len(last)
    earlier = [t for t, i in learned.items() if i < len(scores) - 1 and t in last]
    bwt = sum(last[t] - scores[learned[t]][t] for t in earlier) / len(earlier) if earlier else 0.0
    out = {"op": op, "bwt": bwt, "score": "−loss (nats/token)", "earlier_tasks": earlier}
    if rows is not None:
        per = {}
        for t in earlier:
            c = loss_change(rows[learned[t]][t], rows[-1][t])
            per[t] = {**c, "change": -c["change"], "from_stage": learned[t]}  # score = −loss
        out["per_set"] = per
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


def _short(model: str) -> str:
    """A model's display name: its folder, or run/folder for a run's `final` or a checkpoint's `model`."""
    p = Path(model)
    if p.name == "final":  # <run>/final
        return f"{p.parent.name}/final"
    if p.name == "model" and p.parent.parent.name == "checkpoints":  # <run>/checkpoints/<step>/model
        return f"{p.parent.parent.parent.name}/{p.parent.name}"
    return p.name
