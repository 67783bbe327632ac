"""Where training text comes from: a named source (a folder of files, a .jsonl or a .parquet), its documents
in a fixed order, and the held-out split by content hash. `slm data prepare` (data.py) tokenizes them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from slm.errors import SlmError

TEXT_SUFFIXES = {".jsonl", ".json", ".parquet"}  # everything else in a source is one document per file


@dataclass
class Source:
    name: str  # short name: sub-folder, eval set name, mixture key
    path: str  # a folder (every matching file is one document), a .jsonl/.parquet file, or a text file
    weight: float = 1.0  # share of training sequences drawn from this source, relative to the others
    include: str = "*"  # glob of files taken from a folder (e.g. *.py); searched recursively
    heldout: float | None = None  # this source's held-out fraction (default: DataArgs.heldout)

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise SlmError(f"source name {self.name!r}: use letters, digits, - and _ (it becomes a folder name)")
        if self.heldout is not None and not 0 <= self.heldout <= 1:
            raise SlmError(f"source {self.name}: heldout must be in [0, 1] (got {self.heldout})")
        if not self.weight >= 0:
            raise SlmError(f"source {self.name}: weight must be ≥ 0 (got {self.weight})")


def parse_source(spec: str, include: str = "*") -> Source:
    """`NAME=PATH[:WEIGHT]` (CLI form of a Source)."""
    if "=" not in spec:
        raise SlmError(f"--source {spec!r}: write NAME=PATH or NAME=PATH:WEIGHT (e.g. code=src/:1.5)")
    name, rest = spec.split("=", 1)
    weight = 1.0
    head, _, tail = rest.rpartition(":")
    if head and tail.replace(".", "", 1).isdigit():
        rest, weight = head, float(tail)
    return Source(name=name, path=rest, weight=weight, include=include)


# ---- reading documents --------------------------------------------------------------------------------
def source_files(src: Source) -> list[Path]:
    p = Path(src.path).expanduser()
    if not p.exists():
        raise SlmError(f"source {src.name}: {p} does not exist: check the path")
    files = sorted(f for f in p.rglob(src.include) if f.is_file()) if p.is_dir() else [p]
    if not files:
        raise SlmError(f"source {src.name}: no files matching {src.include!r} under {p}")
    return files


def read_documents(src: Source, files: list[Path]) -> Iterator[dict]:
    """Documents as {"text": str} or {"messages": [...]}, in a fixed order."""
    for f in files:
        if f.suffix in (".jsonl", ".json"):
            with open(f, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        yield _record(json.loads(line), f, n)
        elif f.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise SlmError(f"{f} is Parquet: `pip install pyarrow` to read it, or convert it to JSONL") from None
            for n, row in enumerate(pq.read_table(f).to_pylist(), 1):
                yield _record(row, f, n)
        else:
            try:
                text = f.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # binary files in a code tree (e.g. .pyc, images) are not documents
            if text.strip():
                yield {"text": text}


def _record(row: dict, f: Path, n: int) -> dict:
    if isinstance(row.get("messages"), list):
        return {"messages": row["messages"]}
    if isinstance(row.get("text"), str):
        return {"text": row["text"]}
    raise SlmError(f"{f}:{n}: a record needs a `text` string or a `messages` list (chat)")


def is_heldout(doc: dict, fraction: float) -> bool:
    """Deterministic split by content hash: independent of file order, stable when files are added."""
    h = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < fraction
