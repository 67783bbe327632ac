"""slm.gguf: the type table, the header reader, bits per weight, KV element sizes, a spec from a GGUF."""

from __future__ import annotations

from pathlib import Path

import gguf as gguf_py
import numpy as np
import pytest

from slm.errors import SlmError
from slm.gguf import (
    FLOAT_TYPES,
    QUANT_TYPES,
    TYPES,
    TensorInfo,
    bits_per_weight,
    check_magic,
    contents,
    kv_element_bytes,
    parse_types,
    read_header,
    size_upper_bound,
)
from slm.spec import spec_from_gguf


def _write(path: Path, tensors: dict[str, np.ndarray], **meta) -> Path:
    """A small GGUF written by gguf-py itself (the reference writer), llama metadata in `meta`."""
    w = gguf_py.GGUFWriter(path, "llama")
    for k, v in meta.items():
        getattr(w, f"add_{k}")(v)
    for name, a in tensors.items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_type_table_nominal_bits():
    # ggml-common.h: block_q8_0 = 34 bytes / 32 values, block_q6_K = 210 / 256, block_q4_K = 144 / 256
    assert TYPES["q8_0"].bpw == 8.5 and TYPES["q6_k"].bpw == 6.5625 and TYPES["q4_k_m"].bpw == 4.5
    assert (TYPES["f16"].bpw == 16 and TYPES["f32"].bpw == 32 and TYPES["q4_0"].bpw == 4.5
            and TYPES["q2_k"].bpw == 2.625)
    assert (TYPES["q8_0"].block, TYPES["q6_k"].block, TYPES["f16"].block) == (32, 256, 1)
    assert (FLOAT_TYPES == ("f32", "f16", "bf16") and "q4_k_m" in QUANT_TYPES
            and not set(FLOAT_TYPES) & set(QUANT_TYPES))
    assert TYPES["iq2_xs"].needs_imatrix and not TYPES["q2_k"].needs_imatrix
    assert (TYPES["f32"].ftype == "LLAMA_FTYPE_ALL_F32"
            and TYPES["q4_k_m"].ftype == "LLAMA_FTYPE_MOSTLY_Q4_K_M")
    assert size_upper_bound(1000, "f16") == 2000 and size_upper_bound(1000, "q4_0") == 1000 * 8.5 / 8


def test_parse_types():
    assert parse_types(" Q8_0, q6_k,,q8_0 ") == ("q8_0", "q6_k")
    assert parse_types(["f16", "q4_k_m"]) == ("f16", "q4_k_m") and parse_types("") == ()
    with pytest.raises(SlmError, match="unknown GGUF type 'q9_z': valid types are .*q4_k_m"):
        parse_types("q8_0,q9_z")
    with pytest.raises(SlmError, match="importance matrix for iq2_xs"):
        parse_types("iq2_xs", have_imatrix=False)
    assert parse_types("iq2_xs") == ("iq2_xs",)


def test_kv_element_bytes():
    assert (kv_element_bytes("f16") == 2 and kv_element_bytes("q8_0") == 34 / 32
            and kv_element_bytes("q4_0") == 18 / 32)
    with pytest.raises(SlmError, match="unknown KV cache type 'q5_1'.*q8_0"):
        kv_element_bytes("q5_1")


def test_bits_per_weight_counts_tensor_bytes():
    q8 = TensorInfo("a", (64, 32), "Q8_0", 0)  # 2048 values = 64 blocks × 34 bytes
    f32 = TensorInfo("n", (64,), "F32", 0)
    assert q8.n_bytes == 64 * 34 and f32.n_bytes == 256
    assert bits_per_weight([q8]) == 8.5
    assert bits_per_weight([q8, f32]) == pytest.approx(8 * (64 * 34 + 256) / (2048 + 64))


def test_header_of_a_written_file(tmp_path):
    rng = np.random.default_rng(0)
    p = _write(tmp_path / "m.gguf", {"token_embd.weight": rng.random((16, 8), dtype=np.float32),
                                     "blk.0.attn_q.weight": rng.random((8, 8)).astype(np.float16),
                                     "output_norm.weight": np.ones(8, np.float32)},
               block_count=1, embedding_length=8, feed_forward_length=16, head_count=2, head_count_kv=1,
               context_length=128, vocab_size=16)
    h = read_header(p)
    assert h.version == 3 and h.architecture == "llama"
    assert h.metadata["llama.block_count"] == 1 and h.metadata["llama.context_length"] == 128
    t = {x.name: x for x in h.tensors}
    assert t["token_embd.weight"].shape == (8, 16) and t["token_embd.weight"].ggml_type == "F32"  # ggml order
    assert t["blk.0.attn_q.weight"].ggml_type == "F16" and t["output_norm.weight"].shape == (8,)
    assert h.data_start % 32 == 0
    c = contents(p)
    assert c["params"] == 16 * 8 + 64 + 8 and c["tensor_bytes"] == 16 * 8 * 4 + 64 * 2 + 8 * 4
    assert c["main_type"] == "F32" and c["by_type"]["F16"] == {"tensors": 1, "params": 64, "bytes": 128}
    assert c["size_bytes"] == p.stat().st_size > c["tensor_bytes"]
    s = spec_from_gguf(p)
    assert (s.layers, s.hidden, s.heads, s.kv_heads, s.head_dim, s.vocab, s.max_context, s.tied) == \
        (1, 8, 2, 1, 4, 16, 128, True)  # no output.weight: tied


def test_damaged_files_give_one_line(tmp_path):
    p = _write(tmp_path / "m.gguf", {"a": np.ones((64, 64), np.float32)}, block_count=1)
    data = p.read_bytes()
    (tmp_path / "half.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(SlmError, match="GGUF half.gguf is truncated: tensor a ends past"):
        read_header(tmp_path / "half.gguf")
    (tmp_path / "head.gguf").write_bytes(data[:40])
    with pytest.raises(SlmError, match="cannot read GGUF head.gguf: it ends inside the header"):
        read_header(tmp_path / "head.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 200)
    with pytest.raises(SlmError, match="junk.gguf.*damaged"):
        read_header(tmp_path / "junk.gguf")
    (tmp_path / "x.gguf").write_text("hello")
    with pytest.raises(SlmError, match="not a GGUF file"):
        check_magic(tmp_path / "x.gguf")
    with pytest.raises(SlmError, match="not found"):
        check_magic(tmp_path / "nope.gguf")
    with pytest.raises(SlmError, match="no llama.block_count"):
        spec_from_gguf(_write(tmp_path / "bare.gguf", {"a": np.ones(4, np.float32)}))


@pytest.mark.slow
def test_header_of_the_bundled_model():
    from slm.gguf_import import default_gguf

    c = contents(default_gguf())
    assert c["architecture"] == "llama" and c["main_type"] == "Q4_1"
    assert c["params"] == 134_515_008 and 4.5 < c["bits_per_weight"] < 6
    s = spec_from_gguf(default_gguf())
    assert (s.layers, s.hidden, s.heads, s.kv_heads, s.head_dim, s.vocab, s.max_context, s.tied) == \
        (30, 576, 9, 3, 64, 49152, 8192, True)
    assert s.params == c["params"]  # the spec counts what the file holds (tied embedding once)
