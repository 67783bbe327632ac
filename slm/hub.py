"""Hugging Face Hub ids as model (and tokenizer) arguments: the one resolver from `org/name[@revision]` to a
folder in the standard HF cache, and back from a cache folder to the repository and commit it holds.

An argument that is an existing path is that path. One that is not, and reads `org/name` or
`org/name@revision`, is fetched with huggingface_hub's `snapshot_download` into the HF cache — only the files
a checkpoint needs (safetensors, config, tokenizer, generation defaults; never pickled `*.bin`/`*.pt`) — or
taken from that cache when `HF_HUB_OFFLINE=1`. Anything else is returned unchanged, so the caller's own "not a
directory" message still names the mistake. The environment (`HF_HUB_OFFLINE`, `HF_HUB_CACHE`, `HF_HOME`,
`HF_ENDPOINT`) is read at each call, not when huggingface_hub was imported, so a test or a wrapper can set it.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from slm.errors import SlmError

# huggingface_hub's own rule for repo names (validate_repo_id): letters, digits, `-_.`, at most 96 characters;
# the namespace may be omitted on the Hub but slm requires it, so `gpt2` stays a (missing) local path.
_NAME = r"[A-Za-z0-9][\w.-]{0,95}"
HUB_ID = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[^\s@]+))?$")
# one GGUF file of a repository (GGUF repos hold many quantizations: only the one named is fetched)
GGUF_ID = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[^\s@/]+))?/(?P<file>[^\s@]+\.gguf)$")
# What `snapshot_download` fetches for each need: a checkpoint's weights, config and aux files; the tokenizer
# alone (`slm data prepare -t`); the config alone (`slm info`, `slm plan`: no weights needed).
_CONFIG = ["config.json"]
_TOKENIZER = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
              "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json"]
PATTERNS = {
    # model*.safetensors: transformers' own shards, not Mistral's duplicate consolidated.safetensors
    "weights": ["model*.safetensors", "model.safetensors.index.json", "generation_config.json", *_CONFIG,
                *_TOKENIZER],
    "tokenizer": [*_CONFIG, *_TOKENIZER],
    "config": _CONFIG,
}
# A cache snapshot: <cache>/models--org--name/snapshots/<commit>/...  (huggingface_hub's cache layout,
# https://huggingface.co/docs/huggingface_hub/guides/manage-cache)
_SNAPSHOT = re.compile(r"(?:^|/)(?P<kind>models|datasets)--(?P<repo>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})"
                       r"(?:/|$)")


def hub_cache() -> Path:
    """The HF cache folder as huggingface_hub would choose it from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "~/.cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value, read now."""
    val = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return val.strip().upper() in ("1", "ON", "YES", "TRUE")


def _local(s: str) -> bool:
    return Path(s).exists() or s.startswith((".", "/", "~"))


def parse_id(arg: str | Path) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when `arg` is not an existing path and reads `org/name[@revision]`."""
    s = str(arg)
    m = None if _local(s) else HUB_ID.match(s)
    return (m["repo"], m["rev"]) if m else None


def parse_gguf_id(arg: str | Path) -> tuple[str, str | None, str] | None:
    """(repo id, revision or None, file) when `arg` is not an existing path and reads
    `org/name[@revision]/FILE.gguf`."""
    s = str(arg)
    m = None if _local(s) else GGUF_ID.match(s)
    return (m["repo"], m["rev"], m["file"]) if m else None


def resolve_model(arg: str | Path, need: str = "weights") -> str:
    """The local folder for a model argument: the path itself, or the HF cache snapshot of a Hub id (`need`:
    weights | tokenizer | config chooses which files are fetched; `org/name[@rev]/FILE.gguf` fetches that one
    GGUF, the only form need=gguf resolves). Anything else comes back unchanged."""
    if g := parse_gguf_id(arg):
        return _snapshot(g[0], g[1], f"file:{g[2]}", offline(), str(hub_cache()),
                         os.environ.get("HF_ENDPOINT") or None)
    parsed = None if need == "gguf" else parse_id(arg)  # gguf: only the org/name/FILE.gguf form is an id
    if parsed is None:
        return str(arg)
    if need not in PATTERNS:
        raise ValueError(f"need={need!r}: use one of {sorted(PATTERNS)}")
    return _snapshot(parsed[0], parsed[1], need, offline(), str(hub_cache()),
                     os.environ.get("HF_ENDPOINT") or None)


@lru_cache(maxsize=64)  # one look-up per (id, revision) and process: verbs open a model more than once
def _snapshot(repo: str, rev: str | None, need: str, is_offline: bool, cache: str,
              endpoint: str | None) -> str:
    try:
        # huggingface_hub: deferred, only a Hub id needs it (and it may be missing: the error below)
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise SlmError(f"{repo} looks like a Hugging Face Hub id but huggingface_hub is not installed: "
                       "pip install 'slm-lab[hub]' (or pass a local folder)") from None
    where = f"{repo}@{rev}" if rev else repo
    try:
        if need.startswith("file:"):
            from huggingface_hub import hf_hub_download  # deferred, as above

            return hf_hub_download(repo, need[5:], revision=rev, cache_dir=cache, local_files_only=is_offline,
                                   endpoint=endpoint)
        path = snapshot_download(repo, revision=rev, cache_dir=cache, allow_patterns=PATTERNS[need],
                                 local_files_only=is_offline, endpoint=endpoint)
    except RemoteEntryNotFoundError:
        raise SlmError(f"{where} has no file {need[5:]}: check the file name on the Hub") from None
    except RevisionNotFoundError:
        raise SlmError(f"revision {rev!r} is not a commit, branch or tag of {repo}: pass one that exists "
                       f"(e.g. {repo}@main) or drop @{rev}") from None
    except GatedRepoError:
        raise SlmError(f"{repo} is gated on the Hub: accept its licence on huggingface.co and log in "
                       "(`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise SlmError(f"no model {repo} on the Hub (or it is private): check the id, log in for a private "
                       "repo, or pass a local folder") from None
    except LocalEntryNotFoundError:
        if is_offline:
            raise SlmError(f"{where} is neither a local folder nor in the HF cache {cache}, and "
                           "HF_HUB_OFFLINE=1 forbids downloading: unset HF_HUB_OFFLINE to fetch it, or set "
                           "HF_HUB_CACHE to the cache that holds it") from None
        raise SlmError(f"could not reach the Hub for {where} and it is not in the HF cache {cache}: check "
                       "the network (or HF_ENDPOINT), or pass a local folder") from None
    except HfHubHTTPError as e:
        raise SlmError(f"the Hub refused {where} ({str(e).splitlines()[0]}): check the id and your token"
                       ) from None
    if need == "weights" and not any(Path(path).glob("model*.safetensors")):
        raise SlmError(f"{where} has no .safetensors weights (slm never unpickles *.bin/*.pt): pick a repo "
                       "that ships safetensors, or convert it")
    return path


def hub_origin(path: str | Path) -> dict | None:
    """{"repo", "revision", "type"} when `path` lies in an HF cache snapshot (the commit its folder is named
    by), else None: what a record writes beside an input's hash."""
    m = _SNAPSHOT.search(Path(path).absolute().as_posix())
    if not m:
        return None
    return {"repo": m["repo"].replace("--", "/", 1), "revision": m["commit"], "type": m["kind"][:-1]}
