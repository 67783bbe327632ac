"""slm.corpus: the stdlib corpus (code and pydoc prose) and the held-out English text, from this Python."""

from __future__ import annotations

import inspect
import json
import pydoc_data.topics
import sysconfig
from pathlib import Path

from slm.corpus import CODE_CHARS, SKIP_PARTS, heldout_text, stdlib_corpus, stdlib_files


def test_stdlib_files_are_sorted_and_skip_tests():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(50)
    assert len(files) == 50 and files == sorted(files)
    assert all(f.suffix == ".py" and not SKIP_PARTS & set(f.relative_to(root).parts) for f in files)
    assert stdlib_files(10) == files[:10]


def test_corpus_writes_code_and_pydoc_prose(tmp_path):
    code, general = stdlib_corpus(tmp_path / "src", max_files=20)
    texts = [json.loads(line)["text"] for line in code.read_text().splitlines()]
    sources = [f.read_text(encoding="utf-8", errors="replace") for f in stdlib_files(20)]
    # every kept document is a whole source file, in file order, and only the sizes outside CODE_CHARS
    # drop out
    assert texts == [t for t in sources if CODE_CHARS[0] < len(t) < CODE_CHARS[1]] and texts
    prose = [json.loads(line)["text"] for line in general.read_text().splitlines()]
    assert prose == [t for _, t in sorted(pydoc_data.topics.topics.items())]


def test_heldout_text_is_long_docstrings_of_the_text_modules():
    import argparse

    text = heldout_text()
    assert text.startswith(inspect.getdoc(argparse)) and len(text) > 100_000
    assert text == heldout_text()  # the same text on every call: the sweep compares types on it
    assert len(heldout_text(min_chars=1)) > len(text)  # short docstrings are left out by default
    assert heldout_text(min_chars=10**9) == ""
