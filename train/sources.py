"""Where training text comes from: a named source (a folder of files, a .jsonl, a .parquet, or a Hub dataset
read by hub_data.py), its documents in a fixed order, and the held-out split by content hash. `slm data
prepare` (data.py) tokenizes them."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from slm.errors import SlmError

from .hub_data import is_hub, parse_hub

# records with `text` or `messages`; any other file is one document
STRUCTURED = {".jsonl", ".json", ".parquet"}


@dataclass
class Source:
    name: str  # short name: sub-folder, eval set name, mixture key
    path: str  # a folder (every matching file is one document), a .jsonl/.parquet file, or a text file
    weight: float = 1.0  # share of training sequences drawn from this source, relative to the others
    include: str = "*"  # glob of files taken from a folder (e.g. *.py); searched recursively
    heldout: float | None = None  # this source's held-out fraction (default: DataArgs.heldout)
    # Hub datasets (path hf:ORG/NAME) only:
    revision: str = ""  # commit, branch or tag (default: the main branch, pinned to its commit when read)
    config: str = ""  # the dataset's configuration (subset) name
    data_dir: str = ""  # a folder inside the dataset repository (e.g. data/python of The Stack)
    split: str = "train"  # the split streamed
    column: str = ""  # the column holding text or messages (default: text, messages, then content)

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise SlmError(f"source name {self.name!r}: use letters, digits, - and _ "
                           "(it becomes a folder name)")
        if self.heldout is not None and not 0 <= self.heldout <= 1:
            raise SlmError(f"source {self.name}: heldout must be in [0, 1] (got {self.heldout})")
        if (isinstance(self.weight, bool) or not isinstance(self.weight, (int, float))
                or not 0 <= self.weight < math.inf):
            raise SlmError(f"source {self.name}: weight must be a finite number ≥ 0 (got {self.weight!r})")
        if (self.revision or self.config or self.data_dir or self.column) and not is_hub(self.path):
            raise SlmError(f"source {self.name}: revision, config, data_dir and column are for Hub datasets "
                           "(path hf:ORG/NAME): drop them for a local path")


def parse_source(spec: str, include: str = "*") -> Source:
    """`NAME=PATH[:WEIGHT]` (CLI form of a Source). A path may itself hold a colon: the part after the last
    one is a weight when it reads as a number, or when the path without it exists (then a bad weight is named
    as such)."""
    if "=" not in spec:
        raise SlmError(f"--source {spec!r}: write NAME=PATH or NAME=PATH:WEIGHT (e.g. code=src/:1.5)")
    name, rest = spec.split("=", 1)
    if is_hub(rest):
        fields, weight = parse_hub(rest)
        return Source(name=name, **fields, **({} if weight is None else {"weight": weight}))
    head, colon, tail = rest.rpartition(":")
    if not colon or not head:
        return Source(name=name, path=rest, include=include)
    try:
        return Source(name=name, path=head, weight=float(tail), include=include)
    except ValueError:
        if Path(head).expanduser().exists() and not Path(rest).expanduser().exists():
            raise SlmError(f"--source {spec!r}: weight {tail!r} is not a number: write NAME=PATH:WEIGHT, "
                           f"e.g. {name}={head}:1.5") from None
        return Source(name=name, path=rest, include=include)


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
        if f.suffix in STRUCTURED:
            yield from (doc for _, doc in _records(f))
        else:
            try:
                text = f.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # binary files in a code tree (e.g. .pyc, images) are not documents
            if text.strip():
                yield {"text": text}


def check_records(src: Source, files: list[Path], limit: int = 0) -> None:
    """Read the records of a source's JSONL/Parquet files once before any tokenizing (cheap next to it): every
    line valid JSON with `text` or `messages`, text and chat not mixed, and a chat source with assistant turns
    to learn from. Each problem is one line naming the file and line."""
    first = {}  # kind → where it was first seen
    replies = seen = 0
    for f in (f for f in files if f.suffix in STRUCTURED):
        for where, doc in _records(f):
            kind = "chat" if "messages" in doc else "text"
            first.setdefault(kind, where)
            if len(first) > 1:
                raise SlmError(f"{where}: source {src.name} mixes text and chat records (the other kind at "
                               f"{first['text' if kind == 'chat' else 'chat']}): split them into two sources")
            replies += kind == "chat" and any(m["role"] == "assistant" for m in doc["messages"])
            seen += 1
            if limit and seen >= limit:
                break
    if "chat" in first and not replies:
        raise SlmError(f"source {src.name}: none of its {seen} conversations has an assistant turn, so SFT "
                       "would have nothing to learn: add replies with role `assistant`, or give the records "
                       "as `text`")


def _records(f: Path) -> Iterator[tuple[str, dict]]:
    """("FILE:LINE", record) of a JSONL or Parquet file; a bad line is a one-line error naming it."""
    if f.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # pyarrow is optional: imported only when used
        except ImportError:
            raise SlmError(f"{f} is Parquet: `pip install pyarrow` to read it, "
                           "or convert it to JSONL") from None
        for n, row in enumerate(pq.read_table(f).to_pylist(), 1):
            yield f"{f}:{n}", _record(row, f, n)
        return
    n = 0
    with open(f, encoding="utf-8") as fh:
        try:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SlmError(f"{f}:{n}: not valid JSON ({e.msg}, column {e.colno}): "
                                   "fix or remove that line") from None
                yield f"{f}:{n}", _record(row, f, n)
        except UnicodeDecodeError:
            raise SlmError(f"{f}:{n + 1}: not UTF-8 text: convert the file to UTF-8") from None


def _record(row, f: Path, n: int) -> dict:
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                   and isinstance(m.get("content"), str)
                   for m in row["messages"]):
            raise SlmError(f"{f}:{n}: each message needs a `role` and a `content` string")
        return {"messages": row["messages"]}
    if isinstance(row, dict) and isinstance(row.get("text"), str):
        return {"text": row["text"]}
    raise SlmError(f"{f}:{n}: a record needs a `text` string or a `messages` list (chat)")


def is_heldout(doc: dict, fraction: float) -> bool:
    """Deterministic split by content hash: independent of file order, stable when files are added."""
    h = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < fraction
