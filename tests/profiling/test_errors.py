"""Bad input fails before any long work, with one clear line."""

from __future__ import annotations

import json

import pytest

from slm.cli import main
from slm.errors import SlmError


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_gguf_that_fails_to_load(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 200)  # right magic, garbage header
    err = _err(capsys, ["profile", str(bad), "-o", str(tmp_path / "o")])
    assert err.startswith("error: ") and "broken.gguf" in err
    assert not (tmp_path / "o").exists()


def test_not_a_gguf(tmp_path, capsys):
    bad = tmp_path / "x.gguf"
    bad.write_text("hello")
    assert "not a GGUF file" in _err(capsys, ["profile", str(bad), "-o", str(tmp_path / "o")])


def test_llamacpp_backend_refuses_garbage(tmp_path):
    from slm.quant.llamacpp import LlamaCpp

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 8 + b"\xff" * 64)
    with pytest.raises(SlmError, match="cannot load broken.gguf"):
        LlamaCpp(bad, 256, 1)


def test_context_above_max(tmp_path, capsys, tiny):
    m = tiny()  # max_position_embeddings 256
    err = _err(capsys,
               ["profile", str(m), "--pp", "128,512", "--backends", "torch", "-o", str(tmp_path / "o")])
    assert "above the model's max context 256" in err


def test_output_exists_needs_force(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(dict(model_type="llama", num_hidden_layers=2, hidden_size=64,
                                   intermediate_size=128, num_attention_heads=4, vocab_size=256)))
    (tmp_path / "o").mkdir()
    assert "already exists" in _err(capsys, ["profile", "--config", str(cfg), "-o", str(tmp_path / "o")])


def test_missing_model(tmp_path, capsys):
    assert "not found" in _err(capsys, ["profile", str(tmp_path / "nope.gguf"), "-o", str(tmp_path / "o")])


def test_bad_quant_type(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(dict(model_type="llama", num_hidden_layers=2, hidden_size=64,
                                   intermediate_size=128, num_attention_heads=4, vocab_size=256)))
    assert "q4_k_m" in _err(capsys,
                            ["profile", "--config", str(cfg), "--quant", "q9_z", "-o", str(tmp_path / "o")])
