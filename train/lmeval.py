"""`slm eval --lm-eval TASKS`: EleutherAI's lm-evaluation-harness (PyPI `lm-eval`) on an HF model, its
metrics and their standard errors folded into slm.json and the report as figures.

The harness is used as it is (`lm_eval.simple_evaluate` over an `HFLM` wrapping the model already loaded),
so its prompts, metrics and bootstrap standard errors are the harness's own. Tasks are checked against the
harness's task index (and `--lm-eval-include`, a folder of task YAMLs) before any model is loaded. Data: the
harness reads each task's dataset through `datasets`; offline, a task YAML that names local files
(`dataset_path: json`, `dataset_kwargs: {data_files: {test: PATH}}`) or datasets already in the HF cache
(with HF_DATASETS_OFFLINE=1) are what it can read.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from slm.errors import SlmError
from slm.figure import Figure
from slm.stats import Z95

LMEVAL_KEY = "lm_eval"  # where a row keeps the harness's results (not a set: no token losses)


@dataclass
class LmEvalArgs:
    tasks: list = field(default_factory=list)  # harness task or group names, e.g. [arc_easy, hellaswag]
    include: str = ""  # a folder of extra task YAMLs (local data), scanned before the check
    limit: int = 0  # at most this many documents per task (0 = all): a quick look, not the benchmark
    num_fewshot: int | None = None  # None = each task's own default (0 for most)
    batch_size: int = 8  # documents per forward pass

    def __post_init__(self):
        if not self.tasks:
            raise SlmError("--lm-eval needs task names, e.g. --lm-eval arc_easy,hellaswag")
        if self.limit < 0 or self.batch_size < 1 or (self.num_fewshot is not None and self.num_fewshot < 0):
            raise SlmError("lm-eval: limit ≥ 0, batch_size ≥ 1 and num_fewshot ≥ 0 are needed")


def task_manager(args: LmEvalArgs):
    """The harness's task index (with `include`), every task name checked: an unknown one is refused in one
    line naming the closest known names."""
    try:
        # lm-eval: an optional dependency (the lmeval extra)
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise SlmError("--lm-eval needs the lm-evaluation-harness: pip install 'slm-lab[lmeval]'") from None
    tm = TaskManager(include_path=args.include or None)
    known = set(tm.all_tasks)
    for t in args.tasks:
        if t not in known:
            near = difflib.get_close_matches(t, sorted(known), n=3)
            raise SlmError(f"--lm-eval: unknown task {t!r}" + (f" (did you mean {', '.join(near)}?)" if near
                           else "") + "; `lm-eval ls tasks` lists them, --lm-eval-include adds a YAML folder")
    return tm


def run(model, tok, args: LmEvalArgs, tm) -> dict:
    """The harness on a loaded HF model: {task: {metric: {"value", "stderr"}}, "_n": {task: documents}}."""
    # lm-eval: an optional dependency (the lmeval extra)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)
    res = simple_evaluate(model=lm, tasks=list(args.tasks), num_fewshot=args.num_fewshot,
                          limit=args.limit or None, task_manager=tm, log_samples=False,
                          bootstrap_iters=1000)
    out, n = {}, {}
    for task, metrics in res["results"].items():
        vals = {}
        for key, v in metrics.items():
            name, _, filt = key.partition(",")
            if (name.endswith("_stderr") or name == "sample_len" or not isinstance(v, (int, float))
                    or isinstance(v, bool)):  # sample_len: the harness's document count, not a metric
                continue
            se = metrics.get(f"{name}_stderr,{filt}")
            vals[name if filt in ("none", "") else f"{name} ({filt})"] = {
                "value": float(v), "stderr": float(se) if isinstance(se, (int, float)) else None}
        out[task] = vals
        n[task] = (res.get("n-samples", {}).get(task) or {}).get("effective")
    return {"tasks": out, "n": n, "limit": args.limit, "num_fewshot": args.num_fewshot,
            "version": res.get("versions", {})}


def figures(r: dict, prefix: str = "", who: str = "") -> list[Figure]:
    """One figure per task metric: the harness's value ± 1.96 × its standard error."""
    out = []
    for task, metrics in r["tasks"].items():
        for name, v in metrics.items():
            se = v["stderr"]
            unit = "share" if name.startswith(("acc", "exact", "f1")) else "1"
            out.append(Figure(f"{prefix}lm_eval.{task}.{name}", f"{who}lm-eval {task}: {name}", v["value"],
                              unit, "higher", "quality",
                              interval=Z95 * se if se is not None else None, n=r["n"].get(task), key=True,
                              source="lm-evaluation-harness (simple_evaluate), its own standard error"
                                     + (f"; first {r['limit']} documents" if r["limit"] else "")))
    return out
