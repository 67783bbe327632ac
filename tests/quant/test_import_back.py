"""`slm import` of slm's own GGUF exports: every architecture comes back with the same logits (f32), and a
GGUF without slm's stored config still imports with its explicit head size (fast, tiny models)."""

from __future__ import annotations

import pytest
import torch

from slm.gguf_import import import_gguf
from slm.io import load_model
from slm.quant.gguf_write import write_gguf
from slm.quant.quantize import quantize

IDS = torch.tensor([[1, 5, 9, 200, 3, 4, 7, 250, 0, 17]])


def _max_diff(a_dir, b_dir) -> float:
    a, b = load_model(a_dir), load_model(b_dir)
    with torch.no_grad():
        return float((a(IDS).logits - b(IDS).logits).abs().max())


@pytest.mark.parametrize("kind,tied", [("llama", False), ("llama", True), ("qwen2", False), ("qwen3", True),
                                       ("qwen3", False)])
def test_f32_export_imports_back_identically(tiny, tmp_path, kind, tied):
    """Qwen3's head_dim 32 ≠ 64/4, its q/k norms, Qwen2's biases, the llama Q/K permutation, untied heads."""
    d = tiny(kind, tied=tied, num_hidden_layers=2)
    back = import_gguf(write_gguf(d, tmp_path / "m.gguf", "f32"), tmp_path / "back")
    assert _max_diff(d, back) < 1e-5
    assert load_model(back).config.tie_word_embeddings == tied


def test_q8_0_export_imports_back_close(tiny, tmp_path):
    d = tiny("qwen3", num_hidden_layers=2)
    f32 = write_gguf(d, tmp_path / "m.gguf", "f32")
    q8 = tmp_path / "m-q8_0.gguf"
    quantize(f32, q8, "q8_0", threads=1)
    back = import_gguf(q8, tmp_path / "back")
    assert 0 < _max_diff(d, back) < 0.5  # dequantized q8_0 weights: close, not equal


def test_gguf_without_slm_config_keeps_explicit_head_dim(tiny, tmp_path, monkeypatch):
    """A foreign Qwen3 GGUF goes through transformers' loader; the head size comes from the header."""
    import slm.gguf_import as gi

    d = tiny("qwen3", num_hidden_layers=2)
    g = write_gguf(d, tmp_path / "m.gguf", "f32")
    monkeypatch.setattr(gi, "HF_CONFIG_KEY", "not.in.this.file")
    back = import_gguf(g, tmp_path / "back")
    assert load_model(back).config.head_dim == 32
    assert _max_diff(d, back) < 1e-4
