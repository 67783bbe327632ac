"""Instruction following checked by IFEval's own verifiers (Zhou et al. 2023, "Instruction-Following
Evaluation for Large Language Models"), through the `if-verifiable` package (IFEval's instruction checkers,
which also write each instruction's text).

The prompts are the instruction probe's held-out tasks (train/probe_prompts.py) with one or two verifiable
instructions of IFEval's kinds appended — length, keywords, format, case, JSON, punctuation, start/end —
chosen deterministically from a seed, never two that IFEval lists as conflicting. Nothing is downloaded: the
checkers are code, and the kinds that need NLTK's downloadable sentence tokenizer (sentence counts) are left
out. Scores are IFEval's four: prompt-level (every instruction of the prompt followed) and instruction-level,
each strict (the response as is) and loose (IFEval's variants: first/last line or markdown asterisks
removed), with Wilson 95 % intervals (Wilson 1927); instruction-level intervals treat a prompt's instructions
as independent (a lower bound).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from slm.errors import SlmError
from slm.stats import wilson

from .probe_prompts import split_prompts

IFEVAL_SET = "ifeval"  # its column beside the held-out sets in slm eval and the ablation
WORDS = ["python", "example", "simple", "answer", "result", "first", "value", "clear", "short", "list"]
FORBIDDEN = ["very", "really", "just", "thing", "maybe", "basically", "actually", "quite"]


def _kinds(rng: random.Random) -> dict:
    """{IFEval instruction id: its build_description kwargs}, the variable ones drawn from rng; every kind
    can be followed in a short answer."""
    return {
        "keywords:existence": {"keywords": rng.sample(WORDS, 2)},
        "keywords:forbidden_words": {"forbidden_words": rng.sample(FORBIDDEN, 3)},
        "length_constraints:number_words": {"num_words": rng.choice([20, 30, 50]), "relation": "less than"},
        "detectable_format:json_format": {},
        "detectable_format:number_bullet_lists": {"num_bullets": rng.choice([2, 3])},
        "detectable_format:title": {},
        "detectable_format:number_highlighted_sections": {"num_highlights": rng.choice([1, 2])},
        "change_case:english_lowercase": {},
        "change_case:english_capital": {},
        "punctuation:no_comma": {},
        "startend:end_checker": {"end_phrase": rng.choice(["Is there anything else I can help with?",
                                                           "Any other questions?"])},
        "startend:quotation": {},
        "detectable_content:postscript": {"postscript_marker": "P.S."},
    }


@dataclass
class IFEvalArgs:
    prompts: int = 32  # prompts built (a prefix of the probe's held-out tasks, each with its instructions)
    seed: int = 0  # which instructions go with which task
    max_new_tokens: int = 96  # greedy budget per answer (room for a P.S. or an end phrase)
    batch: int = 16  # prompts per generation batch

    def __post_init__(self):
        if self.prompts < 1 or self.max_new_tokens < 1 or self.batch < 1:
            raise SlmError("ifeval: prompts ≥ 1, max_new_tokens ≥ 1 and batch ≥ 1 are needed")


def _registry() -> tuple[dict, dict]:
    try:
        # if-verifiable: an optional dependency (the evals extra)
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS, INSTRUCTION_DICT
    except ImportError:
        raise SlmError("the IFEval probe needs the if-verifiable package: pip install 'slm-lab[evals]'") \
            from None
    return INSTRUCTION_DICT, INSTRUCTION_CONFLICTS


def build_prompts(args: IFEvalArgs) -> list[dict]:
    """Deterministic prompts: {prompt, instruction_id_list, kwargs} as IFEval's own data rows are."""

    registry, conflicts = _registry()
    rng = random.Random(f"ifeval:{args.seed}")
    tasks = split_prompts("heldout")
    rows = []
    for i in range(args.prompts):
        task = tasks[i % len(tasks)]["prompt"]
        kinds = _kinds(rng)
        ids = [rng.choice(sorted(kinds))]
        if rng.random() < 0.5:  # a second instruction on half the prompts, as IFEval mixes one to three
            free = [k for k in sorted(kinds) if k not in conflicts.get(ids[0], set()) | {ids[0]}
                    and ids[0] not in conflicts.get(k, set())]
            ids.append(rng.choice(free))
        texts = [registry[k](k).build_description(**kinds[k]) for k in ids]
        rows.append({"prompt": f"{task} {' '.join(texts)}", "instruction_id_list": ids,
                     "kwargs": [kinds[k] for k in ids]})
    return rows


def check(rows: list[dict], responses: list[str]) -> list[dict]:
    """Each response checked by IFEval's verifiers: per prompt its instructions' strict and loose results."""
    # if-verifiable and its langdetect: optional dependencies (the evals extra)
    import langdetect
    from if_verifiable.common import evaluate_instructions

    langdetect.DetectorFactory.seed = 0  # the case checkers call langdetect, random unless seeded
    registry, _ = _registry()
    out = []
    for r, text in zip(rows, responses):
        res, _ = evaluate_instructions(text, r["instruction_id_list"], r["kwargs"], r["prompt"], registry)
        strict = [bool(x.strict_pass) for x in res] or [False] * len(r["instruction_id_list"])
        loose = [bool(x.loose_pass) for x in res] or [False] * len(r["instruction_id_list"])
        out.append({"strict": strict, "loose": loose})
    return out


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else float("nan"), "ci95": [lo, hi]}


def scores(rows: list[dict], checked: list[dict]) -> dict:
    """IFEval's four accuracies with Wilson intervals, per-prompt outcomes (`items`, for flips) and per-kind
    counts."""
    ps = [int(all(c["strict"])) for c in checked]
    pl = [int(all(c["loose"])) for c in checked]
    ins = [x for c in checked for x in c["strict"]]
    inl = [x for c in checked for x in c["loose"]]
    kinds: dict = {}
    for r, c in zip(rows, checked):
        for k, s in zip(r["instruction_id_list"], c["strict"]):
            kinds.setdefault(k, [0, 0])
            kinds[k][0] += int(s)
            kinds[k][1] += 1
    return {"prompts": len(rows), "prompt_strict": _rate(sum(ps), len(ps)),
            "prompt_loose": _rate(sum(pl), len(pl)), "instruction_strict": _rate(sum(ins), len(ins)),
            "instruction_loose": _rate(sum(inl), len(inl)),
            "items": {"prompt_strict": ps, "prompt_loose": pl}, "kinds": kinds}


def ifeval(model, tok, args: IFEvalArgs, device) -> dict:
    """One chat model's IFEval-verified row: greedy answers to the built prompts, checked."""
    # torch: deferred, a heavy import (slm.train.probe imports it)
    from .probe import ProbeArgs, answer

    rows = build_prompts(args)
    was_training = model.training
    model.eval()
    answers = answer(model, tok, [r["prompt"] for r in rows],
                     ProbeArgs(max_new_tokens=args.max_new_tokens, batch=args.batch), device)
    model.train(was_training)
    texts = [a["text"] for a in answers]
    res = scores(rows, check(rows, texts))
    res["examples"] = [{"prompt": r["prompt"], "answer": t} for r, t in list(zip(rows, texts))[:4]]
    return res
