import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from slm.errors import SlmError
from slm.gguf_import import import_gguf
from slm.guard import atomic_dir
from slm.io import ShardedWriter, TensorReader, load_model


def test_sharded_writer_roundtrip_and_index(tiny, tmp_path):
    src = tiny("llama", tied=True)
    r = TensorReader(src)
    out = tmp_path / "resharded"
    out.mkdir()
    w = ShardedWriter(out, max_shard_bytes=40_000)  # forces many shards
    for k in r.keys():
        w.add(k, r.get(k))
    files = w.close()
    assert len(files) > 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(r.keys())
    (out / "config.json").write_text((src / "config.json").read_text())
    a, b = load_model(src), AutoModelForCausalLM.from_pretrained(str(out))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert b.lm_head.weight.data_ptr() == b.model.embed_tokens.weight.data_ptr()  # still tied


def test_bf16_and_empty_tensors_roundtrip(tmp_path):
    from safetensors.torch import load_file

    w = ShardedWriter(tmp_path)
    t = torch.randn(3, 5).to(torch.bfloat16)
    w.add("a", t)
    w.add("empty", torch.empty(0, 4))
    w.close()
    got = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(got["a"], t) and got["empty"].shape == (0, 4)


def test_corrupt_and_missing_weights_are_clear_errors(tiny, tmp_path):
    path = tiny("llama")
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(SlmError, match="not a valid safetensors file"):
        TensorReader(path)
    f.write_bytes(b"\x00" * 100)
    with pytest.raises(SlmError, match="not a valid safetensors"):
        TensorReader(path)
    f.unlink()
    (path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(SlmError, match="never unpickles"):
        TensorReader(path)
    with pytest.raises(SlmError, match="not a directory"):
        TensorReader(tmp_path / "nope")


def test_atomic_dir_refuses_existing_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(SlmError, match="--force"):
        with atomic_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("crash mid-way")
    assert (out / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp left behind


def test_import_rejects_non_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"NOPE" + b"\x00" * 64)
    with pytest.raises(SlmError, match="not a GGUF file"):
        import_gguf(bad, tmp_path / "out")
    with pytest.raises(SlmError, match="not found"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_model_import_is_a_complete_checkpoint(real_model):
    from transformers import AutoTokenizer

    names = {p.name for p in real_model.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    cfg = json.loads((real_model / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"] is True
    tok = AutoTokenizer.from_pretrained(str(real_model))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user" in text
    model = AutoModelForCausalLM.from_pretrained(str(real_model))
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert "Paris" in tok.decode(out[0])
