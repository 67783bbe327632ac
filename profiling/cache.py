"""The profile cache (`$SLM_CACHE/quant`): what it holds and how to prune it.

Each entry is one set of weights (slm.profiling.inputs keys it by their SHA-256): the f16 export made from an
HF folder and the GGUF types quantized from it. Nothing owns an entry after its profile ends, so without
pruning the cache only grows; `slm cache` reports it and `slm cache clean` removes entries unused for a
while. An entry whose lock a live process holds is being made or used and is never removed.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from slm.errors import SlmError
from slm.guard import pid_alive
from slm.profiling import inputs

DAY_S = 86400.0


@dataclass(frozen=True)
class Entry:
    """One cache entry."""

    path: Path  # the entry folder ($SLM_CACHE/quant/<first 16 hex digits of the weights' SHA-256>)
    bytes: int  # bytes of every file under it
    files: int  # files under it
    age_days: float  # days since it was last made or used (the folder's mtime; a reuse touches it)
    in_use: bool  # a live process on this host holds one of its locks


def _in_use(folder: Path) -> bool:
    for lock in folder.rglob(".*.lock"):
        try:
            owner = json.loads(lock.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(owner, dict):
            continue
        if owner.get("host") != socket.gethostname() or pid_alive(int(owner.get("pid") or 0)):
            return True  # another host's lock cannot be checked: left alone
    return False


def entries(root: Path | None = None) -> list[Entry]:
    """The cache's entries, oldest first."""
    root = Path(root or inputs.CACHE)
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        files = [f for f in d.rglob("*") if f.is_file() and not f.is_symlink()]
        out.append(Entry(d, sum(f.stat().st_size for f in files), len(files),
                         (time.time() - d.stat().st_mtime) / DAY_S, _in_use(d)))
    return sorted(out, key=lambda e: -e.age_days)


def clean(older_than_days: float = 0.0, root: Path | None = None) -> list[Entry]:
    """Remove the entries unused for more than `older_than_days` (0: all) that no live process holds; return
    what was removed."""
    if not older_than_days >= 0:
        raise SlmError(f"--older-than must be a number of days ≥ 0 (got {older_than_days})")
    gone = []
    for e in entries(root):
        if e.age_days >= older_than_days and not e.in_use:
            shutil.rmtree(e.path, ignore_errors=True)
            gone.append(e)
    return gone
