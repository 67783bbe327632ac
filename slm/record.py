"""slm.json: what a step did, with its resolved config, versions and input hashes.

Every output directory carries one, so the next step reads facts instead of guessing (design.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

from slm import __version__

RECORD = "slm.json"


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
    import importlib.metadata as md

    out = {"slm-lab": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "safetensors", "gguf", "llama_cpp_python", "onnxruntime-genai", "peft"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_record(out_dir: Path, kind: str, args: dict, inputs: dict | None = None, result: dict | None = None) -> dict:
    """Write out_dir/slm.json atomically and return it. `inputs` maps a role to a path; each is hashed."""
    rec = {
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": args,
        "inputs": {k: {"path": str(v), "sha256": model_sha256(Path(v))} for k, v in (inputs or {}).items()},
        "result": result or {},
        "versions": versions(),
    }
    atomic_write_text(Path(out_dir) / RECORD, json.dumps(rec, indent=2, default=str))
    return rec


def read_record(path: Path) -> dict | None:
    """The slm.json of a directory (or the file itself), or None if there is none."""
    p = Path(path)
    p = p / RECORD if p.is_dir() else p
    return json.loads(p.read_text()) if p.is_file() else None


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via temp + rename so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
