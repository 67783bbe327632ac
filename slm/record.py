"""slm.json: what a step did, with its resolved config, versions, input hashes and its figures.

Every output directory carries one, so the next step reads facts instead of guessing. Its figures are typed
(`result.figures`, slm.figure.Figure objects as JSON); SCHEMA says which layout a record has, and a record of
an older layout is refused with a one-line error rather than half-read.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import platform
import time
from pathlib import Path

from slm import __version__
from slm.errors import SlmError
from slm.figure import Figure, dump, load
from slm.hub import hub_origin

RECORD = "slm.json"
# 3: result.figures (typed figures) replaces result.summary (flat keys whose meaning reports decoded by
# pattern)
SCHEMA = 3


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_sha256(model_dir: Path) -> str:
    """One hash over a checkpoint's config and weight files (names and bytes), order-independent of the OS."""
    model_dir = Path(model_dir)
    if model_dir.is_file():
        return file_sha256(model_dir)
    h = hashlib.sha256()
    for p in sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"]:
        if p.is_file():
            h.update(p.name.encode())
            h.update(file_sha256(p).encode())
    return h.hexdigest()


def versions() -> dict:

    out = {"slm-lab": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "safetensors", "gguf", "llama_cpp_python", "onnxruntime-genai",
                "peft"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_record(out_dir: Path, kind: str, args: dict, inputs: dict | None = None,
                 result: dict | None = None, figures: list[Figure] | None = None) -> dict:
    """Write out_dir/slm.json atomically and return it. `inputs` maps a role to a path; each is hashed; the
    figures go to result.figures."""
    result = {k: v for k, v in (result or {}).items() if k != "figures"}
    if figures is not None:
        result["figures"] = dump(figures)
    rec = {
        "schema": SCHEMA,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": args,
        "inputs": {k: _input(v) for k, v in (inputs or {}).items()},
        "result": result,
        "versions": versions(),
    }
    atomic_write_text(Path(out_dir) / RECORD, json.dumps(rec, indent=2, default=str))
    return rec


def _input(path) -> dict:
    """An input's path and hash, and the Hub repository and commit when it came from the HF cache."""
    out = {"path": str(path), "sha256": model_sha256(Path(path))}
    if origin := hub_origin(path):
        out["hub"] = origin
    return out


def read_record(path: Path) -> dict | None:
    """The slm.json of a directory (or the file itself), or None if there is none. A file that is not a JSON
    object, or a record of an older layout, is refused in one line naming the file and the fix."""
    p = Path(path)
    p = p / RECORD if p.is_dir() else p
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SlmError(f"{p} is not valid JSON ({e}): re-run the step that wrote it") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("kind"), str):
        raise SlmError(f"{p} is not an slm record (no 'kind'): re-run the step that wrote it")
    if rec.get("schema") != SCHEMA:
        raise SlmError(f"{p} was written by an older slm (record schema {rec.get('schema', 'before 3')}, "
                       f"this slm reads {SCHEMA}): re-run the step that wrote it (slm demo redoes such "
                       "steps)")
    if not isinstance(rec.get("result", {}), dict):
        raise SlmError(f"{p}: its 'result' is not an object: re-run the step that wrote it")
    try:  # every reader of a record reads its figures: damaged ones are refused here, naming the file
        load(rec.get("result", {}).get("figures", []))
    except SlmError as e:
        raise SlmError(f"{p}: {e}: re-run the step that wrote it") from None
    return rec


def figures_of(rec: dict) -> list[Figure]:
    """A record's figures (result.figures), typed."""
    return load(rec.get("result", {}).get("figures", []))


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via temp + rename so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
