"""`slm demo`: the main job — the whole lab on the bundled SmolLM2-135M-Instruct, as a newcomer runs it.

Every step writes its output folder (with slm.json) and is skipped when that folder is complete, so the demo
can be re-run and resumes after an interruption; `--force` redoes everything. Each step's report is copied
to reports/<step>/ and reports/index.html links them all.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from slm.record import read_record


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


# ---- steps: each writes one output folder (with slm.json) and names it up front --------------------------
@dataclass
class Step:
    name: str  # shown in progress and used for reports/<NN>-<name>/
    out: Callable[[dict], Path]  # the folder the step writes (its slm.json marks it done)
    run: Callable[[dict, Path], object]  # does the work


def run_import(ctx: dict, out: Path) -> None:
    from slm.io import default_gguf, import_gguf
    from slm.record import write_record

    gguf = default_gguf()
    import_gguf(gguf, out, force=True)  # reached only when not done (or --force)
    write_record(out, "import", {"gguf": str(gguf)}, inputs={"gguf": gguf})


def run_info(ctx: dict, out: Path) -> None:
    from slm.io import atomic_dir
    from slm.record import write_record
    from slm.report.render import Table, render_report
    from slm.spec import load_spec

    s = load_spec(ctx["base"]).summary()
    summary = {"parameters (M)": round(s["params"] / 1e6, 1), "layers": s["layers"], "KV heads": s["kv_heads"],
               "KV bytes/token (f16)": s["kv_bytes_per_token"]["f16"], "KV overtakes weights at": s["kv_crossover_context"]}
    rows = [[m["context"], m["weights"] / 2**20, m["kv_cache"] / 2**20, m["total"] / 2**20, m["kv_share"]] for m in s["memory"]]
    with atomic_dir(out, force=True) as tmp:
        render_report(tmp / "report.html", "SmolLM2-135M-Instruct: model spec", "info", summary, [],
                      [Table("Memory at context (fp32 weights, f16 KV cache)",
                             ["context", "weights MiB", "KV MiB", "total MiB", "KV share"], rows)],
                      notes=["computed from config.json (analytic, no measurement)"])
        write_record(tmp, "info", {"model": str(ctx["base"])}, result={"summary": summary, "spec": s})


def run_expand(ctx: dict, out: Path) -> None:
    from slm.surgery.expand import ExpandArgs, expand

    expand(ctx["base"], out, ExpandArgs(groups=6, copies=1, force=True))


def steps(ctx: dict) -> list[Step]:
    m, r = ctx["models"], ctx["runs"]
    ctx["base"] = m / "smollm2-135m"
    ctx["expanded"] = m / "smollm2-135m-x36"
    return [
        Step("import", lambda c: c["base"], run_import),
        Step("info", lambda c: r / "info", run_info),
        Step("expand", lambda c: c["expanded"], run_expand),
    ]


def run_demo(args: DemoArgs) -> int:
    from rich.console import Console

    from slm.report.compare import build_index

    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own progress lines say what is happening
    transformers.logging.set_verbosity_error()
    con = Console()
    ctx = {"models": args.root / "models", "runs": args.root / "runs", "reports": args.root / "reports"}
    for d in ("models", "runs", "reports"):
        ctx[d].mkdir(parents=True, exist_ok=True)
    plan = steps(ctx)
    wanted = set(args.only.split(",")) if args.only else {s.name for s in plan}
    unknown = wanted - {s.name for s in plan}
    if unknown:
        from slm.errors import SlmError

        raise SlmError(f"unknown demo step(s) {sorted(unknown)}: choose from {', '.join(s.name for s in plan)}")
    t_all = time.perf_counter()
    for k, step in enumerate(plan, 1):
        if step.name not in wanted:
            continue
        out = step.out(ctx)
        con.rule(f"[bold]step {k}/{len(plan)}: {step.name}")
        if read_record(out) is not None and not args.force:
            con.print(f"already done → {out} (use --force to redo)")
        else:
            t0 = time.perf_counter()
            step.run(ctx, out)
            con.print(f"done in {time.perf_counter() - t0:.0f} s → {out}")
        _publish(out, ctx["reports"] / f"{k:02d}-{step.name}")
    index = build_index(ctx["reports"], "slm-lab demo: SmolLM2-135M-Instruct")
    con.rule(f"[bold green]demo finished in {time.perf_counter() - t_all:.0f} s")
    con.print(f"open {index}")
    return 0


def _publish(out: Path, dest: Path) -> None:
    """Copy a step's report and slm.json into reports/<NN>-<step>/ so the index can link it."""
    if not (out / "report.html").is_file():
        return
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(out / "report.html", dest / "index.html")
    if (out / "slm.json").is_file():
        shutil.copy2(out / "slm.json", dest / "slm.json")
