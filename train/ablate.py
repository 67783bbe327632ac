"""`slm ablate`: LLaMA Pro's ablation as one command — the same data and token budget for four ways to spend
it.

- expanded: train only the blocks `slm expand` added (LLaMA Pro, Wu et al. 2024), on the recipe's expanded
  model;
- lora: LoRA (Hu et al. 2021) on the original model, rank chosen so its trainable parameter count matches the
  expanded run's (or the rank given);
- full: full fine-tuning of the original model;
- freeze: freeze-tuning of as many existing layers of the original model as the expansion added. Which ones:
  by default the layers `expand` copied (the top block of each group), i.e. the same number at the same depths
  — the only difference from block expansion is then "overwrite existing blocks" versus "add identity copies
  above them", which is the question users ask of LLaMA Pro (why not unfreeze those layers?). `freeze=top`
  takes the top-most layers instead (the usual freeze-tuning choice, e.g. Lee et al. 2019, "What Would Elsa
  Do? Freezing Layers During Transformer Fine-Tuning").

Every run is `slm.train.loop.train` with TrainArgs built from the recipe + overrides; then the original model
and every final model are evaluated together (held-out sets ± s.e., the instruction probe with the original's
answers as reference); forgetting is OP/BWT over the two stages (original → method); `slm diff` gives each
method's weight-space picture (relative change, intruder dimensions).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from slm.errors import SlmError
from slm.guard import guard_output
from slm.record import figures_of, read_record
from slm.surgery.layers import prior_record, split_layer_name

from .ablate_grid import check_grid, over_seeds, seed_runs, tune, validation_split
from .ablate_report import index_headline, write_ablation
from .args import load_recipe

METHODS = ("expanded", "lora", "full", "freeze")
# Each method's own peak learning rate, as its literature trains it (one shared rate judges the rate, not the
# method: full fine-tuning diverges at a rate made for a few new blocks):
# - expanded: LLaMA Pro's CPT of the new blocks, 2e-4 (Wu et al. 2024, §4.1);
# - lora: 2e-4, LoRA's GPT-2 Medium/Large E2E setting (Hu et al. 2021, Table 11) and QLoRA's for models ≤ 13B
#   (Dettmers et al. 2023, App. B.2);
# - full: 2e-5, full fine-tuning of every block (LLaMA 2's SFT rate, Touvron et al. 2023 §3.1; the 1e-5–5e-5
#   range BERT-era full fine-tuning uses, Devlin et al. 2019 App. A.3);
# - freeze: 2e-4, the rate of the blocks it stands in for — LLaMA Pro's ablation trains its baselines at the
#   CPT rate of the new blocks, and only as many layers as expansion adds move.
DEFAULT_LR = {"expanded": 2e-4, "lora": 2e-4, "full": 2e-5, "freeze": 2e-4}


@dataclass
class AblateArgs:
    recipe: str  # training recipe YAML ("" = overrides only); its `model` is an `slm expand` output
    out: str  # ablation folder: runs/<method>/, slm.json, report.html
    overrides: list = field(default_factory=list)  # key=value overrides of the recipe, applied to every run
    budget: int = 0  # training tokens per method (0 = the recipe's steps × global_batch × seq_len)
    base: str = ""  # the original model (default: the expanded model's own input, read from its slm.json)
    methods: list = field(default_factory=lambda: list(METHODS))  # which of expanded, lora, full, freeze
    lora_r: int = 0  # LoRA rank (0 = match the expanded run's trainable parameter count)
    # copied (the layers expand copied: same count, same depths) | top (top-most layers)
    freeze: str = "copied"
    domain: str = ""  # the held-out set that is the training domain (default: the data's heaviest source)
    probe_prompts: int = 80  # held-out instruction-probe prompts
    eval_tokens: int = 16384  # held-out tokens per set
    humaneval: str = ""  # "" | loss | pass: HumanEval of the original and every final model
    humaneval_problems: int = 0  # the first N HumanEval problems (0 = all 164)
    ifeval: int = 0  # prompts of the IFEval-verified probe (slm.train.ifeval; 0 = off)
    lr: dict = field(default_factory=dict)  # {method: peak lr} over DEFAULT_LR (the recipe's lr is not used)
    # factors of each method's lr to try on the domain's validation split (ablate_grid; [] = no grid)
    lr_grid: list = field(default_factory=list)
    seeds: int = 1  # runs per method (data order, random init); changes are means over them
    keep_weights: bool = False  # keep every run's final weights (default: dropped once evaluated)
    diff: bool = True  # weight-space diagnostics (slm diff) of every final model against the original
    force: bool = False  # replace an existing ablation folder (without it, finished runs are reused)

    def __post_init__(self):
        bad = sorted(set(self.methods) - set(METHODS))
        if bad or not self.methods:
            raise SlmError(f"methods {bad or '[]'}: choose from {list(METHODS)}")
        if self.freeze not in ("copied", "top"):
            raise SlmError(f"freeze={self.freeze!r}: use copied or top")
        for m, v in self.lr.items():
            if m not in METHODS:
                raise SlmError(f"--lr names {m!r}: choose from {list(METHODS)}")
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise SlmError(f"--lr {m}={v!r}: a learning rate must be a positive number, e.g. {m}=2e-4")
        if self.ifeval < 0:
            raise SlmError(f"--ifeval {self.ifeval}: the number of prompts must be ≥ 0 (0 = off)")
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise SlmError(f"--seeds {self.seeds!r}: at least 1 run per method is needed, e.g. --seeds 3")
        check_grid(self.lr_grid)
        if self.budget < 0 or self.lora_r < 0 or self.probe_prompts < 0 or self.eval_tokens < 1:
            raise SlmError("budget ≥ 0, lora_r ≥ 0, probe_prompts ≥ 0 and eval_tokens ≥ 1 are needed")


def base_of(expanded: Path, base: str) -> Path:
    """The original model: given, or the input `slm expand` recorded in the expanded model's slm.json."""

    if base:
        return Path(base)
    rec = read_record(expanded) or {}
    path = rec.get("inputs", {}).get("model", {}).get("path") if rec.get("kind") in ("expand", None) else None
    if not path:
        raise SlmError(f"cannot tell which model {expanded} was expanded from: pass base=ORIGINAL (--base)")
    return Path(path)


def new_layer_params(expanded: Path) -> tuple[int, list[int], list[int]]:
    """(parameters in the expanded model's new layers, their indices, the original layers they copy)."""
    from slm.io import TensorReader  # torch: deferred, a heavy import

    r = TensorReader(expanded)
    rec = prior_record(r.config)
    new = rec["new_layers"]
    if not new:
        raise SlmError(f"{expanded} has no new layers in its slm_surgery record: the recipe's model must be "
                       "an `slm expand` output")
    n = sum(math.prod(r.shape(k)) for k in r.keys() if split_layer_name(k)[0] in set(new))
    return n, new, sorted({rec["source_layers"][j] for j in new})


def lora_rank(base: Path, n_params: int, targets: list[str]) -> int:
    """The LoRA rank whose adapters (r × (in + out) per target matrix, every layer) hold about n_params."""
    from slm.io import TensorReader  # torch: deferred, a heavy import

    r = TensorReader(base)
    per_rank = sum(sum(r.shape(k)) for k in r.keys() if split_layer_name(k)[0] is not None
                   and k.endswith(".weight") and k.split(".")[-2] in targets and len(r.shape(k)) == 2)
    if not per_rank:
        raise SlmError(f"no LoRA target matrices {targets} in {base}")
    return max(1, round(n_params / per_rank))


def method_runs(args: AblateArgs) -> tuple[dict, Path]:
    """{method: TrainArgs} with the same data, schedule and token budget, and the original model."""

    probe = load_recipe(args.recipe, args.overrides, out=str(Path(args.out) / "runs" / "probe"))
    expanded = Path(probe.model)
    base = base_of(expanded, args.base)
    # copied < new only when expand copied P > 1 blocks per group
    n_new, new, copied = new_layer_params(expanded)
    top = list(range(_num_layers(base) - len(new), _num_layers(base)))
    tokens = args.budget or probe.total_steps() * probe.global_batch * probe.seq_len
    rank = args.lora_r or lora_rank(base, n_new, probe.lora_targets)
    per = {"expanded": dict(model=str(expanded), trainable="expanded"),
           "lora": dict(model=str(base), trainable="lora", lora_r=rank, lora_layers="all",
                        lora_alpha=max(1, round(probe.lora_alpha / probe.lora_r * rank))),
           "full": dict(model=str(base), trainable="full"),
           "freeze": dict(model=str(base), trainable=copied if args.freeze == "copied" else top)}
    lrs = method_lrs(args)
    runs = {m: load_recipe(args.recipe, args.overrides, out=str(Path(args.out) / "runs" / m), tokens=tokens,
                           steps=0, resume=False, force=True, lr=lrs[m], keep_state=False, **per[m])
            for m in args.methods}
    return runs, base


def method_lrs(args: AblateArgs) -> dict:
    """Each method's peak lr: DEFAULT_LR, over which --lr sets some."""
    return {m: float(args.lr.get(m, DEFAULT_LR[m])) for m in args.methods}


def _num_layers(model: Path) -> int:
    from slm.io import read_config  # torch: deferred, a heavy import

    return read_config(model)["num_hidden_layers"]


# run settings that do not change what is trained (`out`: a grid's chosen run is moved to the method's folder)
IGNORED = {"force", "resume", "progress", "report", "init", "out", "keep_state"}


def _finished(run: Path, targs) -> bool:
    """The run folder holds a finished run of exactly these settings with its weights; a run of other settings
    is refused (use --force)."""

    rec = read_record(run) or {}
    if not (rec.get("kind") == "train" and not rec.get("result", {}).get("interrupted")):
        return False
    want = {k: v for k, v in targs.to_dict().items() if k not in IGNORED}
    have = {k: v for k, v in rec.get("args", {}).items() if k not in IGNORED}
    if have != want:
        key = next((k for k in sorted(want.keys() | have.keys()) if have.get(k) != want.get(k)), "?")
        raise SlmError(f"{run} was trained with {key}={have.get(key)!r}, this ablation asks "
                       f"{want.get(key)!r}: pass --force to redo the runs, or another --out")
    return (run / "final").is_dir()  # weights dropped by an earlier ablation: the same run trains again


def ablate(args: AblateArgs) -> dict:
    """Train every method (each seed; the lr grid first when asked), evaluate them together against the
    original, diff their weights; write slm.json and report.html into args.out. Finished runs in an existing
    folder are reused unless force; the runs' weights are dropped once evaluated unless keep_weights."""
    from .evaluate import heldout_sets  # torch: deferred, a heavy import

    probe = load_recipe(args.recipe, args.overrides, out=str(Path(args.out) / "runs" / "x"))
    data, expanded = probe.data, Path(probe.model)
    # every check on the data before any training: the domain, and the grid's validation split
    sets = [k for k, v in heldout_sets(data, [], "--domain").items() if v.n_tokens > 1]
    domain = args.domain or _heaviest(data, sets)
    if domain not in sets:
        raise SlmError(f"domain {domain!r} is not a held-out set of {data}: choose from {sets}")
    seq_len = _eval_seq_len(probe)
    val = validation_split(data, domain, seq_len, args.eval_tokens) if args.lr_grid else None
    if args.humaneval:
        # torch: deferred, a heavy import (slm.train.humaneval imports it)
        from .humaneval import HumanEvalArgs, check_tokenizer
        HumanEvalArgs(mode=args.humaneval, problems=args.humaneval_problems)
        for m in (expanded, base_of(expanded, args.base)):
            check_tokenizer(m)
    # the models are inputs too: --force wipes the output folder, and slm.json there is what base_of reads
    with guard_output(args.out, [args.recipe or None, data, expanded, base_of(expanded, args.base)],
                      args.force, exists_ok=True):
        if args.force and Path(args.out).exists():
            shutil.rmtree(args.out)
        runs, base = method_runs(args)
        grid = tune(runs, args.lr_grid, val, _train, Path(args.out) / "runs") if val is not None else {}
        runs = {m: replace(t, lr=grid[m]["chosen"]) if m in grid else t for m, t in runs.items()}
        trained = {m: [_train(t) for t in seed_runs(targs, args.seeds)] for m, targs in runs.items()}
        result = _evaluate(args, base, data, domain, seq_len, trained)
        result.update(lr={m: t.lr for m, t in runs.items()}, lr_grid=grid, seeds=args.seeds)
        write_ablation(Path(args.out), args, result)
        result["headline"] = index_headline(result)
        if not args.keep_weights:  # what the report needs stays: each run's slm.json, report and metrics
            for reps in trained.values():
                for r in reps:  # keep_state=false left no checkpoints: final/ is all the weights
                    shutil.rmtree(r["model"], ignore_errors=True)
    return result


def _eval_seq_len(targs) -> int:
    return min(targs.seq_len, 512)


def _train(targs) -> dict:
    """One method's run (reused when its folder already holds a finished run): its final model and counts."""

    from .loop import train  # torch: deferred, a heavy import

    run = Path(targs.out)
    if _finished(run, targs):
        figs = figures_of(read_record(run))
    else:
        res = train(targs)
        if res["interrupted"]:
            raise KeyboardInterrupt
        figs = res["figures"]
    s = {f.name: f.value for f in figs}
    steps = int(s.get("steps") or 0)
    return {"run": str(run), "model": str(run / "final"), "steps": steps,
            "tokens": steps * targs.global_batch * targs.seq_len,
            "trainable_params": s.get("trainable_params"), "trainable": targs.trainable,
            "lora_r": targs.lora_r if targs.trainable == "lora" else None, "seed": targs.seed, "lr": targs.lr}


def _evaluate(args: AblateArgs, base: Path, data: str, domain: str, seq_len: int, trained: dict) -> dict:
    """The original and every final model (each seed) on the held-out sets and the probe; per method the
    changes against the original as means over seeds, forgetting per set with OP/BWT beside it, the probe
    items that flipped (each seed), and diff of the first seed."""
    from slm.surgery.diff import diff_many  # torch: deferred, a heavy import

    from .evaluate import EvalArgs, changes, evaluate, forgetting, public  # torch: deferred, a heavy import
    from .probe import PROBE_SET  # torch: deferred, a heavy import

    models = [r["model"] for reps in trained.values() for r in reps]
    ev = evaluate(EvalArgs(models=[str(base)] + models, data=data, seq_len=seq_len, tokens=args.eval_tokens,
                           probe="instruct", probe_prompts=args.probe_prompts, humaneval=args.humaneval,
                           humaneval_problems=args.humaneval_problems, ifeval=args.ifeval),
                  keep_tokens=True)
    row0, rows, methods = ev["matrix"][0], iter(ev["matrix"][1:]), {}
    for m, reps in trained.items():
        mrows = [next(rows) for _ in reps]
        per_seed = [changes(row0, row) for row in mrows]
        delta = {k: over_seeds([c[k] for c in per_seed]) for k in per_seed[0] if "change" in per_seed[0][k]}
        # what the original knew: the other sets, the probe, HumanEval (the sets scored by a loss)
        general = {k: 0 for k, v in mrows[0].items() if k != domain and "loss" in v}
        fs = [forgetting([{k: -v["loss"] for k, v in r.items() if "loss" in v} for r in (row0, row)],
                         ["", domain], general) for row in mrows]
        rates = {k: {x: over_seeds([c[k]["flips"][x] for c in per_seed]) for x in per_seed[0][k]["flips"]}
                 for k in per_seed[0] if "flips" in per_seed[0][k]}
        forgot = {"op": sum(f["op"] for f in fs) / len(fs), "bwt": sum(f["bwt"] for f in fs) / len(fs),
                  "score": fs[0]["score"], "earlier_tasks": fs[0]["earlier_tasks"],
                  "per_set": {k: {**delta[k], "change": -delta[k]["change"],
                                  "seeds": [-x for x in delta[k]["seeds"]]} for k in general if k in delta}}
        methods[m] = {**reps[0], "seeds": [r["seed"] for r in reps], "runs": [r["run"] for r in reps],
                      "eval": public(mrows[0]), "forgetting": forgot, "delta": delta, "rates": rates,
                      "flips": [{k: v["flips"] for k, v in c.items() if "flips" in v} for c in per_seed]}
    if args.diff:  # the first seed of each method, all against the original in one pass
        for m, d in zip(trained, diff_many([reps[0]["model"] for reps in trained.values()], base)):
            methods[m]["diff"] = d["totals"]
    return {"base": str(base), "data": data, "domain": domain, "sets": ev["sets"], "original": public(row0),
            "methods": methods, "probe_set": PROBE_SET}


def _heaviest(data: str, sets: list[str]) -> str:
    """The data's source with the largest mixture weight among the held-out sets (the training domain)."""

    src = (read_record(Path(data)) or {}).get("result", {}).get("sources", {})
    weighted = [(src.get(s, {}).get("weight", 0), s) for s in sets]
    return max(weighted)[1] if weighted else sets[0]
