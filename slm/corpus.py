"""The text every machine has: this Python's own standard library and documentation, as a training corpus and
as held-out text. One place for it, used by `slm demo`, the benchmarks and the profiler's quantization sweep.

- Code: the stdlib's `.py` sources (tests, idlelib and lib2to3 left out: generated or near-duplicate text).
- General prose: the language reference that ships with CPython (`pydoc_data.topics`), never trained on.
- Held-out English: the docstrings of a fixed set of stdlib modules (the sweep's perplexity/KLD text).
"""

from __future__ import annotations

import importlib
import inspect
import json
import pydoc_data.topics
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from slm.record import atomic_write_text

CODE_FILES = 600  # stdlib files taken (sorted order): ~1.3 M tokens, more than the demo's budget reads
SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3"}  # folders left out
# a source file is kept when strictly inside this length (no stubs, no giant tables)
CODE_CHARS = (200, 60_000)
# Python ships its own documentation; the docstrings of these stdlib modules are our offline held-out English.
TEXT_MODULES = ("argparse", "collections", "json", "logging", "subprocess", "unittest", "pathlib", "textwrap",
                "functools", "itertools", "typing", "dataclasses", "datetime", "decimal", "fractions",
                "heapq")


def stdlib_files(max_files: int = CODE_FILES) -> list[Path]:
    """The first `max_files` stdlib sources in sorted path order, outside SKIP_PARTS."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in root.rglob("*.py") if not SKIP_PARTS & set(f.relative_to(root).parts))
    return files[:max_files]


def stdlib_corpus(folder: Path, max_files: int = CODE_FILES) -> tuple[Path, Path]:
    """Write code.jsonl (stdlib modules) and general.jsonl (pydoc_data topics) into `folder`; returns both."""

    lo, hi = CODE_CHARS
    docs = (f.read_text(encoding="utf-8", errors="replace") for f in stdlib_files(max_files))
    folder.mkdir(parents=True, exist_ok=True)
    code, general = folder / "code.jsonl", folder / "general.jsonl"
    _write_jsonl(code, (t for t in docs if lo < len(t) < hi))
    _write_jsonl(general, (t for _, t in sorted(pydoc_data.topics.topics.items())))
    return code, general


def heldout_text(min_chars: int = 81) -> str:
    """The docstrings of TEXT_MODULES (each module's, then its public callables' in name order) of at least
    `min_chars` characters, joined by blank lines: English prose about code (the profiler's quantization sweep
    scores perplexity and KLD on it; the demo's CPT corpus holds the sources these docstrings come from)."""

    parts = []
    for name in TEXT_MODULES:
        mod = importlib.import_module(name)
        parts += [inspect.getdoc(mod) or ""] + [inspect.getdoc(getattr(mod, a)) or ""
                                                for a in sorted(dir(mod))
                                                if not a.startswith("_") and callable(getattr(mod, a))]
    return "\n\n".join(p for p in parts if len(p) >= min_chars)


def _write_jsonl(path: Path, texts: Iterable[str]) -> None:
    """One `{"text": …}` line per document, written atomically (the format `slm data prepare` reads)."""
    atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))
