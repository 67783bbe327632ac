"""`profile_model`: the whole `slm profile` as one library call — the CLI verb and `slm demo` both call it.

    profile_model("models/smollm2-export", "runs/profile", ProfileArgs(device="jetson", quant="q8_0,q4_k_m"))

Order of work: the cheap checks first (ProfileArgs has already checked types, backends and device; then the
output folder), then either the remote run over SSH or resolving MODEL into inputs (which may export and
quantize) and profiling here; last, the report, profile.json and slm.json written into a temp folder renamed
into place.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from slm.errors import SlmError
from slm.guard import guard_output
from slm.profiling.args import ProfileArgs
from slm.profiling.inputs import resolve
from slm.profiling.remote import RemoteArgs, profile_remote
from slm.profiling.report import save
from slm.profiling.run import profile

__all__ = ["ProfileArgs", "RemoteArgs", "profile_model", "remote_argv"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def remote_argv(args: ProfileArgs, model: Path, remote: RemoteArgs) -> list[str]:
    """The `slm profile` options that reproduce `args` on the device: the ProfileArgs record itself,
    serialised, so every field arrives as it was asked (its output goes under remote_dir)."""
    return ["--args-json", json.dumps(args.to_dict()), "-o", f"{remote.remote_dir}/{model.name}.profile",
            "--force"]


def profile_model(model: str | Path | None, out: str | Path, args: ProfileArgs, *,
                  config: str | Path | None = None, remote: RemoteArgs | None = None, force: bool = False,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Profile MODEL (GGUF, HF folder, ONNX folder, export folder) or a bare `config` into `out`; return the
    result with "out". `remote`: measure on that device over SSH instead of here."""

    progress = progress or _stderr
    out = Path(out)
    # before any long work: not an input, not existing (without force), writable; locked until the report is
    # saved
    with guard_output(out, [model, config], force):
        if remote is not None:

            if not model:
                raise SlmError("--host needs a MODEL to copy to the device")
            if remote.runner == "llama-bench":
                from slm.profiling.llamabench import profile_llama_bench  # only this runner needs it

                res = profile_llama_bench(Path(model), args, remote, progress)
            else:
                res = profile_remote(Path(model), remote, remote_argv(args, Path(model), remote), progress)
        else:

            inputs = resolve(model, config, args.quant, args.threads, args.bench.context_needed(),
                             args.backends, progress)
            res = profile(inputs, args, out.parent, progress)
        record = {"model": str(model) if model else None, "config": str(config) if config else None,
                  "out": str(out), "force": force,
                  "remote": {k: str(v) for k, v in asdict(remote).items()} if remote else None,
                  **args.to_dict()}
        save(res, out, record, str(model or config) if (model or config) else None, force)
    res["out"] = str(out)
    return res
