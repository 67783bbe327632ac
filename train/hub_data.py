"""Hugging Face Hub datasets as training sources: `NAME=hf:ORG/DATASET[@REV][:SUBSET][:key=value][:WEIGHT]`.

Read with `datasets.load_dataset(..., streaming=True)`, so a sample of a huge corpus (FineWeb-Edu, The Stack,
OpenWebMath: the LLaMA Pro mixture) needs no full download: documents are pulled until the source's
`--max-docs` / `--max-tokens` are reached. Online, the revision is pinned to the commit the Hub names for it
(recorded in slm.json, so a rerun reads the same files); with HF_HUB_OFFLINE=1 the dataset comes from the HF
cache (`snapshot_download(local_files_only=True)`, the commit its folder is named by) and `load_dataset` reads
that folder — the same reader either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from slm.errors import SlmError
from slm.hub import HUB_ID, hub_cache, hub_origin, offline

PREFIX = "hf:"
OPTIONS = ("config", "data_dir", "split", "column")
# the column a document is read from when none is named: plain text, chat, then The Stack's `content`
AUTO_COLUMNS = ("text", "messages", "content")


def is_hub(path: str) -> bool:
    return str(path).startswith(PREFIX)


def parse_hub(spec: str) -> tuple[dict, float | None]:
    """`hf:ORG/NAME[@REV]` then `:`-separated fields: `key=value` (config, data_dir, split, column), a bare
    subset (a data_dir when it holds `/`, else a config name), and a trailing number (the weight). Returns
    (Source fields, weight or None)."""
    fields = spec[len(PREFIX):].split(":")
    m = HUB_ID.match(fields[0])
    if not m:
        raise SlmError(f"{spec!r}: after hf: write a dataset id ORG/NAME[@REVISION], e.g. "
                       "hf:bigcode/the-stack-smol:data/python:1.5")
    out, weight = {"path": f"{PREFIX}{m['repo']}", "revision": m["rev"] or ""}, None
    for i, f in enumerate(fields[1:], 1):
        key, eq, value = f.partition("=")
        if eq:
            if key not in OPTIONS:
                raise SlmError(f"{spec!r}: unknown option {key!r}: use {', '.join(OPTIONS)}")
            out[key] = value
        elif i == len(fields) - 1 and _number(f):
            weight = float(f)
        elif f:
            out["data_dir" if "/" in f else "config"] = f
    return out, weight


def _number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


class HubStream:
    """One Hub dataset split, opened for streaming: its documents, its commit, its columns."""

    def __init__(self, src):
        try:
            import datasets  # optional (the hub extra), and a heavy import (pyarrow, pandas)
        except ImportError:
            raise SlmError(f"source {src.name} is a Hub dataset: pip install 'slm-lab[hub]' (datasets) to "
                           "read it") from None
        self.src, self.repo = src, src.path[len(PREFIX):]
        where = f"{self.repo}@{src.revision}" if src.revision else self.repo
        first, self.commit = self._locate(where)
        # cache_dir read now (datasets reads HF_DATASETS_CACHE once, at import): its lock files go there
        kw = dict(name=src.config or None, data_dir=src.data_dir or None, split=src.split, streaming=True,
                  cache_dir=os.environ.get("HF_DATASETS_CACHE") or None)
        try:
            self.ds = datasets.load_dataset(first, **kw, **({} if Path(first).is_dir() else
                                                             {"revision": self.commit}))
        except ValueError as e:  # an unknown split or config: datasets names the ones there are
            raise SlmError(f"source {src.name} ({where}): {str(e).splitlines()[0]}") from None
        except FileNotFoundError as e:
            raise SlmError(f"source {src.name} ({where}): no data files ({str(e).splitlines()[0]}): check "
                           "data_dir / config") from None
        self.columns = list(self.ds.column_names or [])
        self.column = src.column or next((c for c in AUTO_COLUMNS if c in self.columns), "")
        if self.column not in self.columns:
            named = f"column {src.column!r} is not" if src.column else "none of text/messages/content is"
            raise SlmError(f"source {src.name} ({where}): {named} in its columns {self.columns}: add "
                           f":column=NAME (one of them)")

    def _locate(self, where: str) -> tuple[str, str]:
        """(what load_dataset opens, the commit): the Hub id pinned to its commit, or offline the cache
        folder."""
        # huggingface_hub: deferred with datasets, which brings it
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        rev = self.src.revision or None
        try:
            if offline():
                path = snapshot_download(self.repo, repo_type="dataset", revision=rev, local_files_only=True,
                                         cache_dir=str(hub_cache()))
                return path, hub_origin(path)["revision"]
            api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
            return self.repo, api.dataset_info(self.repo, revision=rev).sha
        except RevisionNotFoundError:
            raise SlmError(f"revision {rev!r} is not a commit, branch or tag of dataset {self.repo}: pass "
                           "one that exists or drop @REV") from None
        except RepositoryNotFoundError:
            raise SlmError(f"no dataset {self.repo} on the Hub (or it is private): check the id or log in"
                           ) from None
        except LocalEntryNotFoundError:
            raise SlmError(f"dataset {where} is not in the HF cache {hub_cache()} and HF_HUB_OFFLINE=1 "
                           "forbids downloading: unset HF_HUB_OFFLINE, or set HF_HUB_CACHE to the cache that "
                           "holds it") from None

    @property
    def origin(self) -> dict:
        s = self.src
        return {"repo": self.repo, "revision": self.commit, "type": "dataset", "config": s.config,
                "data_dir": s.data_dir, "split": s.split, "column": self.column}

    def documents(self) -> Iterator[dict]:
        """{"text": ...} or {"messages": [...]} per row, in the dataset's order; rows with an empty or
        non-text value are skipped (as empty files are in a folder source)."""
        for n, row in enumerate(self.ds, 1):
            v = row.get(self.column)
            if isinstance(v, str):
                if v.strip():
                    yield {"text": v}
            elif isinstance(v, list) and v:
                if not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                           and isinstance(m.get("content"), str) for m in v):
                    raise SlmError(f"source {self.src.name}: row {n} of column {self.column!r} is a list but "
                                   "not of {role, content} messages: pick a text column with :column=NAME")
                yield {"messages": [{"role": m["role"], "content": m["content"]} for m in v]}
