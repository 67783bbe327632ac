"""`slm demo`: the main job — the whole lab on the bundled SmolLM2-135M-Instruct, as a newcomer runs it.

Every step writes its output folder (with slm.json) and is skipped when that folder is complete, so the demo
can be re-run and resumes after an interruption; `--force` redoes everything. Each step's report is copied
to reports/<NN>-<step>/ and reports/index.html links them all.

Each step is one call of a library function with typed arguments (never an argv list); this module only holds
the list of steps, which is why it lives in slm/cli/, the one room of slm/ that may import train, quant and
profiling.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from slm.corpus import stdlib_corpus
from slm.errors import SlmError
from slm.info import write_info
from slm.profiling.api import ProfileArgs, profile_model
from slm.profiling.plan import PlanArgs
from slm.profiling.plan import run_plan as plan_model
from slm.record import read_record
from slm.report.compare import build_index, compare_runs
from slm.train.ablate import AblateArgs, ablate
from slm.train.args import PRESETS, TrainArgs
from slm.train.data import DataArgs, Source, prepare


@dataclass
class DemoArgs:
    root: Path = Path(".")  # models/, runs/ and reports/ are created under it
    force: bool = False  # redo finished steps
    only: str | None = None  # comma-separated step names to run (default: all)


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole lab on the bundled SmolLM2-135M (re-runnable)")
    p.add_argument("--root", default=".", help="where models/, runs/ and reports/ go")
    p.add_argument("--force", action="store_true", help="redo steps that are already done")
    p.add_argument("--only", help="comma-separated steps to run (default: all)")
    p.set_defaults(func=lambda a: run_demo(DemoArgs(Path(a.root), a.force, a.only)))


def run_demo(args: DemoArgs) -> int:
    """Run the wanted steps in order (skipping finished ones), publish their reports, write the index."""
    import transformers  # transformers: deferred, a heavy import


    transformers.utils.logging.disable_progress_bar()  # our own progress lines say what is happening
    transformers.logging.set_verbosity_error()
    con = Console()
    ctx = {"root": args.root, "force": args.force, "models": args.root / "models", "runs": args.root / "runs",
           "reports": args.root / "reports"}
    for d in ("models", "runs", "reports"):
        ctx[d].mkdir(parents=True, exist_ok=True)
    todo = steps(ctx)
    wanted = _wanted(todo, args.only)
    t_all = time.perf_counter()
    for k, step in enumerate(todo, 1):
        if step.name not in wanted:
            continue
        out = step.out(ctx)
        con.rule(f"[bold]step {k}/{len(todo)}: {step.name}")
        if _done(out) and not args.force:
            con.print(f"already done → {out} (use --force to redo)")
        elif not _run_step(con, step, ctx, out):
            return 130
        _publish(out, ctx["reports"] / f"{k:02d}-{step.name}")
    index = build_index(ctx["reports"], "slm-lab demo: SmolLM2-135M-Instruct")
    con.rule(f"[bold green]demo finished in {time.perf_counter() - t_all:.0f} s")
    con.print(f"open {index}")
    return 0


# ---- the steps: each writes one output folder (with slm.json) and names it up front -------------------
@dataclass
class Step:
    name: str  # shown in progress and used for reports/<NN>-<name>/
    out: Callable[[dict], Path]  # the folder the step writes (its slm.json marks it done)
    run: Callable[[dict, Path], object]  # does the work


def steps(ctx: dict) -> list[Step]:
    m, r = ctx["models"], ctx["runs"]
    ctx.update(base=m / "smollm2-135m", expanded=m / "smollm2-135m-x36", data=ctx["root"] / "data" / "stdlib",
               cpt=r / "cpt-x36", merged=m / "smollm2-135m-x36-wise",
               export=m / "smollm2-135m-x36-cpt-export")
    return [
        Step("import", lambda c: c["base"], run_import),
        Step("info", lambda c: r / "info", run_info),
        Step("expand", lambda c: c["expanded"], run_expand),
        Step("data", lambda c: c["data"], run_data),
        Step("train", lambda c: c["cpt"], run_train),
        Step("merge", lambda c: c["merged"], run_merge),
        Step("eval", lambda c: r / "eval", run_eval),
        Step("ablate", lambda c: r / "ablate", run_ablate),
        Step("export", lambda c: c["export"], run_export),
        Step("profile", lambda c: r / "profile-x36-cpt", run_profile),
        Step("profile-base", lambda c: r / "profile-base", run_profile_base),
        Step("plan", lambda c: r / "plan-orin-nano", run_plan),
        Step("compare-expand", lambda c: r / "compare-expand", run_compare_expand),
        Step("compare-profiles", lambda c: r / "compare-profiles", run_compare_profiles),
    ]


# ---- the steps (each reached only when its output is not done, or with --force) ----------------------------
def run_import(ctx: dict, out: Path) -> None:
    from slm.gguf_import import import_gguf  # torch: deferred, a heavy import

    import_gguf(None, out, force=True)  # the bundled GGUF; slm.json written inside the same atomic write


def run_info(ctx: dict, out: Path) -> None:

    write_info(ctx["base"], out, force=True, title="SmolLM2-135M-Instruct: model spec")


def run_expand(ctx: dict, out: Path) -> None:
    from slm.surgery.expand import ExpandArgs, expand  # torch: deferred, a heavy import

    expand(ctx["base"], out, ExpandArgs(groups=6, copies=1, force=True))


def run_data(ctx: dict, out: Path) -> None:
    # CPT on the stdlib's code; the language reference's prose is the general held-out set (weight 0: never
    # trained on). slm.corpus says what is in each.

    code, general = stdlib_corpus(ctx["root"] / "data" / "src")
    prepare(DataArgs([Source("code", str(code)), Source("general", str(general), weight=0.0, heldout=1.0)],
                     str(ctx["base"]), heldout=0.05, force=True), out)


# CPT budget sized for ~1.5 minutes on 2 CPU cores (measured: ~225 tok/s with the 6 trainable blocks): short
# sequences, batch 1, a higher lr than the paper's 2e-4 because 100 steps is all there is. Held-out
# evaluations and checkpoints every 50 steps (each evaluation of both sets costs ~7 s, a quarter of 50 steps'
# time; a checkpoint writes 0.85 GB) so an interrupted demo resumes mid-run; once finished only final/ stays
# (keep_state=false: the AdamW state, 255 MB, is not needed again).
CPT = dict(steps=100, seq_len=128, global_batch=1, micro_batch=1, lr=5e-4, eval_tokens=2048, eval_every=50,
           save_every=50, keep_last=1, keep_state=False)


def run_train(ctx: dict, out: Path) -> None:
    from slm.train.checkpoint import latest  # torch: deferred, a heavy import
    from slm.train.loop import train  # torch: deferred, a heavy import

    resume = latest(out) is not None and not ctx["force"]  # an interrupted run goes on from its checkpoint
    # The cpt preset's defaults under our own keys, as a recipe naming `preset: cpt` resolves them.
    args = TrainArgs(**{**PRESETS["cpt"], **CPT, "preset": "cpt", "trainable": "expanded",
                        "model": str(ctx["expanded"]), "data": str(ctx["data"]), "out": str(out),
                        "resume": resume, "force": not resume})
    res = train(args)
    if res["interrupted"]:  # the loop saved a checkpoint; the next `slm demo` resumes from it
        if res.get("signal") == "SIGTERM":
            print("demo stopped by SIGTERM in step train (checkpoint saved): run `slm demo` again to go on")
            raise SystemExit(143)  # what `timeout` and schedulers expect, as `slm train` itself exits
        raise KeyboardInterrupt


def run_merge(ctx: dict, out: Path) -> None:
    # WiSE-FT (Wortsman et al. 2022): average the weights before and after fine-tuning to give back some of
    # the domain gain for less forgetting. The original blocks are identical in both, so this halves the
    # change of the new blocks only.
    from slm.surgery.merge import MergeRecipe, merge

    recipe = MergeRecipe(method="linear", models=[{"model": str(ctx["expanded"]), "weight": 1},
                                                  {"model": str(ctx["cpt"] / "final"), "weight": 1}])
    merge(recipe, out, force=True)


def run_eval(ctx: dict, out: Path) -> None:
    from slm.train.eval_report import write_eval  # matplotlib: deferred, a heavy import
    from slm.train.evaluate import EvalArgs, evaluate, forgetting, public  # torch: deferred, a heavy import
    from slm.train.probe import PROBE_SET  # torch: deferred, a heavy import

    # The instruction probe (the base model's own greedy answers to held-out chat prompts as the reference) is
    # where an Instruct model's forgetting shows first; the WiSE-FT row says whether averaging gives chat
    # ability back. 32 prompts keep the step near three minutes on 2 cores.
    models = [ctx["base"], ctx["expanded"], ctx["cpt"] / "final", ctx["merged"]]
    eargs = EvalArgs(models=[str(m) for m in models], data=str(ctx["data"]), seq_len=CPT["seq_len"],
                     tokens=4096, probe="instruct", probe_prompts=32)
    res = evaluate(eargs, keep_tokens=True)
    # Forgetting over the two stages that learned something: the expanded model (general knowledge and chat,
    # the base's) then CPT on code. Score = −loss, so BWT < 0 is forgetting of the general set or of the
    # probe.
    rows = res["matrix"][1:3]
    res["forgetting"] = forgetting([{k: -v["loss"] for k, v in r.items()} for r in rows], ["general", "code"],
                                   {PROBE_SET: 0}, rows)
    res["matrix"] = [public(r) for r in res["matrix"]]
    write_eval(out, eargs, res, force=True)


# LLaMA Pro's ablation at a budget that fits the demo (~5 minutes on 2 cores): each method trains on the same
# 2,048 code tokens from the same start (expanded, LoRA with as many trainable parameters, full, freeze-tuning
# of the layers expand copied), each at its own literature rate (slm.train.ablate.DEFAULT_LR); then domain
# gain vs forgetting (held-out sets and the instruction probe) with their uncertainties. At this budget most
# differences are inside the noise, and the report says so; benchmarks and `slm ablate` with a larger
# --budget, --seeds and --lr-grid give the real comparison.
# HumanEval: the canonical-solution loss of the first 40 problems (paired between models; pass@1 generation of
# all 164 would take longer than the whole demo on 2 cores), and the IFEval-verified probe on 16 prompts.
ABLATE = dict(budget=2048, probe_prompts=16, eval_tokens=2048, humaneval="loss", humaneval_problems=40,
              ifeval=16)


def run_ablate(ctx: dict, out: Path) -> None:

    over = [f"model={ctx['expanded']}", f"data={ctx['data']}", "preset=cpt", f"seq_len={CPT['seq_len']}",
            "global_batch=1", "micro_batch=1", "steps=1", "eval=false", "progress=false"]
    ablate(AblateArgs(recipe="", overrides=over, out=str(out), force=True, **ABLATE))


def run_export(ctx: dict, out: Path) -> None:
    from slm.quant.export import ExportArgs, export  # torch: deferred, a heavy import

    # int4:k_quant_last: the lowest-KLD candidate of the recipe search (quant/onnx_search.py) whose zero
    # points are integers, so onnxruntime's MatMulNBits runs its int4 kernel (KLD 0.36 vs the builder
    # default's 0.45 on this model, and the search's pick); HQQ's KLD is lower here (0.08, the Q4_1 source's
    # grid reproduced) but its float zero points make the CPU kernel dequantise, decoding ~10x slower. Naming
    # it saves the demo the search, which `slm export --onnx int4` runs on both axes.
    export(ctx["cpt"] / "final", out, ExportArgs(gguf=["q8_0", "q6_k", "q4_k_m"], onnx=["int4:k_quant_last"],
                                                 name="smollm2-135m-x36-cpt", force=True))


def run_profile(ctx: dict, out: Path) -> None:
    # The KV-cache types' quality on one window of 2,048 tokens (1,024 scored), not the default two: a
    # quantized V cache runs llama.cpp's CPU flash attention ~3x slower than f16 here (q4_0: ~30 s a window),
    # and the plan's choice between f16, q8_0 and q4_0 is far outside that interval.

    profile_model(str(ctx["export"]), out,
                  ProfileArgs(device="jetson", quant="q8_0,q6_k,q4_k_m", kv_quality_chunks=1), force=True)


def run_profile_base(ctx: dict, out: Path) -> None:
    # The 30-layer original under the same timed protocol (llama.cpp on q8_0, the first type; q4_k_m in the
    # sweep): what the six new blocks cost on the device (decode speed, KV cache) is the compare step's point.
    # The KV-cache types' quality is the CPT model's (the plan reads that profile), so not measured here.

    profile_model(str(ctx["base"]), out,
                  ProfileArgs(device="jetson", quant="q8_0,q4_k_m", backends=("llama.cpp",),
                              kv_quality_chunks=0),
                  force=True)


def run_plan(ctx: dict, out: Path) -> None:
    # What of the CPT model fits an Orin Nano 8GB at 4k context above 20 tok/s decode: depth (as is, pruned)
    # × GGUF type × KV type, projected by the calibrated device model; KLD and perplexity taken from this
    # model's own export (the validated types) and its profile (the KV-cache types), "unknown" for the others;
    # the recommendation is the fastest with measured KLD ≤ the default bound.

    profile = ctx["runs"] / "profile-x36-cpt" / "slm.json"
    quality = (str(ctx["export"] / "slm.json"),) + ((str(profile),) if profile.is_file() else ())
    args = PlanArgs(device="jetson-orin-nano-8gb", context=4096, min_decode=20, prune=True, quality=quality)
    plan_model(ctx["cpt"] / "final", args, out, force=True)


def run_compare_expand(ctx: dict, out: Path) -> None:
    _compare([ctx["base"], ctx["expanded"]], out)  # before/after expansion: parameters, layers, KV bytes


def run_compare_profiles(ctx: dict, out: Path) -> None:
    _compare([ctx["runs"] / "profile-base", ctx["runs"] / "profile-x36-cpt"], out)


# ---- helpers -----------------------------------------------------------------------------------------------
def _wanted(plan: list[Step], only: str | None) -> set[str]:
    """The step names `--only` picks (all without it); an unknown name is refused before anything runs."""
    names = [s.name for s in plan]
    wanted = set(only.split(",")) if only else set(names)
    unknown = wanted - set(names)
    if unknown:
        raise SlmError(f"unknown demo step(s) {sorted(unknown)}: choose from {', '.join(names)}")
    return wanted


def _run_step(con, step: Step, ctx: dict, out: Path) -> bool:
    """Run one step and say how long it took; False when it was interrupted (Ctrl-C)."""
    t0 = time.perf_counter()
    try:
        step.run(ctx, out)
    except KeyboardInterrupt:
        con.print(f"[yellow]interrupted in step {step.name}: run `slm demo` again to go on from there")
        return False
    con.print(f"done in {time.perf_counter() - t0:.0f} s → {out}")
    return True


def _compare(runs: list[Path], out: Path) -> None:

    compare_runs(runs, out, force=True)  # the same call as `slm report compare`


def _done(out: Path) -> bool:
    """A step is done when its slm.json exists and does not record an interrupted run; an unreadable record,
    or one of an older slm, is redone."""
    try:
        rec = read_record(out) if out.is_dir() else None
    except SlmError:
        return False
    return rec is not None and not rec.get("result", {}).get("interrupted", False)


def _publish(out: Path, dest: Path) -> None:
    """Copy a step's report and slm.json into reports/<NN>-<step>/ so the index can link it."""
    page = next((out / n for n in ("report.html", "index.html") if (out / n).is_file()), None)
    if page is None:
        return
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(page, dest / "index.html")
    if (out / "slm.json").is_file():
        shutil.copy2(out / "slm.json", dest / "slm.json")
    for sub in sorted(out.glob("runs/*/report.html")):  # pages a report links to (the ablation's runs)
        (dest / sub.parent.relative_to(out)).mkdir(parents=True, exist_ok=True)
        shutil.copy2(sub, dest / sub.relative_to(out))
