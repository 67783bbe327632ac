"""Instruction-following probe: how much of an Instruct model's chat behaviour survives a training stage.

Forgetting in an Instruct model under continued pretraining shows up in its chat behaviour before plain-prose
perplexity moves, so the probe works in chat format. Before training, `build_probe` answers the held-out probe
prompts (train/probe_prompts.py) greedily with the model; those answers are the reference. After any stage,
`probe` reports on the same prompts:

- loss: mean next-token NLL (nats/token) of the reference answers, chat template applied and the prompt masked
  — the drift of the model's own instruction-following distribution; ± the standard error over answer tokens;
- exact: exact-match accuracy on the known-answer questions after normalisation (case, punctuation, articles,
  number formats), and `extract` (the target read from the answer's first line: its last number, or the target
  as whole words), each with a
  Wilson score 95 % interval (Wilson 1927, "Probable inference, the law of succession, and statistical
  inference"; better coverage than the normal interval at small n or rates near 0 or 1: Brown, Cai & DasGupta
  2001, "Interval estimation for a binomial proportion");
- ended: the share of answers that end their turn (an end-of-turn token within max_new_tokens) instead of
  rambling on, with its Wilson interval.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from slm.errors import SlmError
from slm.figure import Figure, scored
from slm.guard import atomic_dir
from slm.record import write_record
from slm.score import token_stats
from slm.stats import wilson

from .probe_prompts import split_prompts

PROBE_SET = "instruct-probe"  # its column name beside the held-out sets in slm eval


@dataclass
class ProbeArgs:
    # held-out prompts used (a fixed prefix of the held-out split; 0 = all 182): ~1 min, 135M, 1 thread
    prompts: int = 80
    max_new_tokens: int = 32  # greedy generation budget per answer; an answer ends its turn within it or not
    batch: int = 16  # prompts per generation / scoring batch
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self):
        if self.prompts < 0 or self.max_new_tokens < 1 or self.batch < 1:
            raise SlmError("probe: prompts ≥ 0, max_new_tokens ≥ 1 and batch ≥ 1 are needed")


# ---- statistics and normalisation --------------------------------------------------------------------------
def rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else float("nan"), "ci95": [lo, hi]}


_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten eleven "
                                           "twelve thirteen fourteen fifteen sixteen seventeen eighteen "
                                           "nineteen twenty".split())}


def normalise(text: str) -> str:
    """Lower case; number formats unified (1,000 → 1000, 5.0 → 5, five → 5); punctuation, markdown and the
    articles a/an/the removed; whitespace collapsed (after SQuAD's normalisation, Rajpurkar et al. 2016)."""
    t = text.lower().replace("−", "-")
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)
    t = re.sub(r"\b(\d+)\.0+\b", r"\1", t)
    t = re.sub(r"[^\w\s.-]|_", " ", t)
    t = re.sub(r"(?<!\d)[.-]|[.-](?!\d)", " ", t)  # keep 3.5 and -4, drop sentence dots and dashes
    words = [_WORDS.get(w, w) for w in t.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def exact_match(answer: str, target: str) -> bool:
    return normalise(answer) == normalise(target)


def extract_match(answer: str, target: str) -> bool:
    """The answer's first non-empty line holds the target: for a number, its last number is the target (the
    final number is the answer, as in GSM8K's scoring: Cobbe et al. 2021); otherwise the target appears as
    whole words."""
    line = normalise(next((ln for ln in answer.splitlines() if ln.strip()), ""))
    want = normalise(target)
    if re.fullmatch(r"-?\d+(\.\d+)?", want):
        numbers = re.findall(r"-?\d+(?:\.\d+)?", line)
        return bool(numbers) and numbers[-1] == want
    return f" {want} " in f" {line} "


# ---- the model side ---------------------------------------------------------------------------------------
def chat_tokenizer(model_dir: Path | str):
    """The model's tokenizer; a model without a chat template cannot be probed in chat format."""
    from transformers import AutoTokenizer  # transformers: deferred, a heavy import

    if not any((Path(model_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise SlmError(f"{model_dir} has no tokenizer (tokenizer.json): the instruction probe needs one; "
                       "copy the tokenizer files of the model it came from into the folder, or drop --probe")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if not tok.chat_template:
        raise SlmError(f"{model_dir} has no chat template: the instruction probe needs a chat model "
                       "(add chat_template.jinja to the folder, or drop --probe)")
    return tok


def stop_ids(tok, model) -> list[int]:
    """End-of-turn ids: the tokenizer's EOS and the generation config's eos_token_id(s)."""
    ids = {tok.eos_token_id}
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen if isinstance(gen, list) else [gen])
    return sorted(i for i in ids if i is not None)


def prompt_ids(tok, prompt: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def answer(model, tok, prompts: list[str], args: ProbeArgs, device) -> list[dict]:
    """Greedy answers, batched with left padding: {ids (through the first end-of-turn token), text, ended}."""
    stops, pad = stop_ids(tok, model), tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for k in range(0, len(prompts), args.batch):
        seqs = [prompt_ids(tok, p) for p in prompts[k:k + args.batch]]
        width = max(map(len, seqs))
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                             do_sample=False, eos_token_id=stops, pad_token_id=pad)[:, width:].tolist()
        for row in gen:
            end = next((i for i, t in enumerate(row) if t in stops), None)
            reply = row if end is None else row[:end + 1]
            out.append({"ids": reply, "text": tok.decode(reply, skip_special_tokens=True).strip(),
                        "ended": end is not None})
    return out


@torch.no_grad()
def answer_losses(model, tok, rows: list[dict], args: ProbeArgs, device) -> list[float]:
    """Per-token NLL of each reference answer after its chat-formatted prompt (prompt tokens masked). Rows are
    batched by length (less padding), and the output head runs on answer positions only."""
    pairs = sorted(((prompt_ids(tok, r["prompt"]), r["reply_ids"]) for r in rows if r["reply_ids"]),
                   key=lambda pa: len(pa[0]) + len(pa[1]))
    losses: list[float] = []
    for k in range(0, len(pairs), args.batch):
        chunk = pairs[k:k + args.batch]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, (p, a) in enumerate(chunk):
            ids[i, :len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
            mask[i, :len(p) + len(a)] = 1
        hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        target = labels[:, 1:].to(device)
        keep = target != -100
        logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
        losses += F.cross_entropy(logits, target[keep], reduction="none").tolist()
    return losses


# ---- reference and figures --------------------------------------------------------------------------------
def device_of(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available()
                        else ("cpu" if name == "auto" else name))


def make_reference(model, tok, args: ProbeArgs, device, model_name: str = "") -> tuple[dict, list[dict]]:
    """The model's own greedy answers to the held-out prompts: (reference, the answers as generated)."""
    rows = split_prompts("heldout")
    rows = rows[:args.prompts] if args.prompts else rows
    answers = answer(model, tok, [r["prompt"] for r in rows], args, device)
    ref = {"model": model_name, "args": asdict(args), "vocab": len(tok),
           "rows": [{**r, "reply": a["text"], "reply_ids": a["ids"], "ended": a["ended"]}
                    for r, a in zip(rows, answers)]}
    return ref, answers


def score(model, tok, ref: dict, args: ProbeArgs, device, answers: list[dict] | None = None,
          keep_tokens: bool = False) -> dict:
    """The probe's figures for one model against a reference (answers: this model's, when already generated);
    keep_tokens adds `_tokens`, the reference answers' per-token losses (in memory, for paired
    comparisons)."""
    if ref["vocab"] != len(tok):
        raise SlmError(f"the probe reference was built with a {ref['vocab']}-token tokenizer, this model has "
                       f"{len(tok)}: build the reference from this model family's stage 0")
    was_training = model.training
    model.eval()
    rows = ref["rows"]
    answers = answers or answer(model, tok, [r["prompt"] for r in rows], args, device)
    nll = answer_losses(model, tok, rows, args, device)
    model.train(was_training)
    st = token_stats(nll)
    facts = [(r, a) for r, a in zip(rows, answers) if r["answer"] is not None]
    out = {"_tokens": nll} if keep_tokens else {}
    exact = [int(exact_match(a["text"], r["answer"])) for r, a in facts]
    extract = [int(extract_match(a["text"], r["answer"])) for r, a in facts]
    ended = [int(a["ended"]) for a in answers]
    return {**out, "prompts": len(rows), "loss": st["loss"], "loss_se": st["loss_se"], "ppl": st["ppl"],
            "tokens": st["tokens"],
            "exact": rate(sum(exact), len(facts)), "extract": rate(sum(extract), len(facts)),
            "ended": rate(sum(ended), len(answers)),
            # per prompt (1 = passed), in the reference's order: what flipped between two stages
            "items": {"exact": exact, "extract": extract, "ended": ended},
            "max_new_tokens": ref["args"]["max_new_tokens"],
            "examples": [{"prompt": r["prompt"], "answer": a["text"], "target": r["answer"]}
                         for r, a in zip(rows[:6], answers)]}


def build_probe(model: Path | str, out: Path | str, args: ProbeArgs | None = None,
                force: bool = False) -> dict:
    """Answer the held-out probe prompts with `model` (before training) and write out/reference.json (+
    slm.json) through the output guard; returns the reference with the model's own scores under "scores"."""
    from slm.io import load_model  # torch: deferred, a heavy import

    args = args or ProbeArgs()
    tok = chat_tokenizer(model)
    device = device_of(args.device)
    net = load_model(model, "float32").to(device).eval()
    ref, answers = make_reference(net, tok, args, device, str(model))
    ref["scores"] = score(net, tok, ref, args, device, answers)
    with atomic_dir(out, force, [model]) as tmp:
        (tmp / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
        write_record(tmp, "probe", asdict(args), {},
                     {k: v for k, v in ref["scores"].items() if k != "examples"},
                     figures=probe_figures(ref["scores"]))
    return ref


def probe_figures(p: dict, prefix: str = "probe.", who: str = "") -> list[Figure]:
    """One model's probe scores as figures: the chat-format loss of the reference answers (± 1.96 s.e. over
    tokens) and the three rates with their Wilson intervals (the half-width shown is the wider side; the note
    gives both ends)."""
    def share(key: str, label: str) -> Figure:
        r = p[key]
        lo, hi = r["ci95"]
        return Figure(f"{prefix}{key}", f"{who}{label}", r["rate"] if r["n"] else None, "share", "higher",
                      "quality", interval=max(r["rate"] - lo, hi - r["rate"]) if r["n"] else None, n=r["n"],
                      exact=False, note=f"{r['k']}/{r['n']}, Wilson 95 % [{lo:.1%}, {hi:.1%}]")

    return [scored(f"{prefix}loss", f"{who}instruction probe: loss of the reference answers", p["loss"],
                   p["loss_se"], p["tokens"], "nats/token", key=True,
                   source=f"{p['prompts']} held-out chat prompts, the first model's own greedy answers"),
            share("exact", "instruction probe: exact answer"),
            share("extract", "instruction probe: answer in the first line"),
            share("ended", "instruction probe: ends its turn")]


def probe(model, reference, args: ProbeArgs | None = None, tokenizer=None) -> dict:
    """The probe's figures for `model` (a folder, or a loaded HF model with `tokenizer`) against `reference`
    (a build_probe output folder, its reference.json, or the dict)."""
    from slm.io import load_model  # torch: deferred, a heavy import

    if not isinstance(reference, dict):
        p = Path(reference)
        reference = json.loads((p / "reference.json" if p.is_dir() else p).read_text())
    args = args or ProbeArgs(**{**reference["args"], "device": "auto"})
    if isinstance(model, (str, Path)):
        tokenizer = chat_tokenizer(model)
        model = load_model(model, "float32").to(device_of(args.device))
    if tokenizer is None:
        raise SlmError("probe() of a loaded model needs its tokenizer: pass tokenizer=")
    return score(model, tokenizer, reference, args, next(model.parameters()).device)
