"""KV-cache bytes: analytic (from the architecture) vs what llama.cpp allocates, and the share curve."""

from __future__ import annotations

import pytest

from slm.profiling import kv
from slm.spec import spec_from_config, spec_from_gguf


@pytest.mark.slow
@pytest.mark.parametrize("cache_type", ["f16", "q8_0", "q4_0"])
def test_analytic_matches_llamacpp_allocation(gguf, cache_type):
    spec = spec_from_gguf(gguf)
    rows = kv.measure_llamacpp(gguf, spec, [512, 1000, 4096], cache_type, threads=1)
    for r in rows:
        assert r["cells"] == kv.llama_cells(r["context"])  # 1000 is padded to 1024 cells
        assert r["kv_cache"] > 0
        assert abs(r["kv_rel_err"]) <= 0.02, r
    # the cache grows linearly with cells: 8× the cells, 8× the bytes
    assert rows[2]["kv_cache"] / rows[0]["kv_cache"] == pytest.approx(8, rel=0.02)


@pytest.mark.slow
def test_spec_from_gguf_is_smollm2(gguf):
    s = spec_from_gguf(gguf)
    assert (s.layers, s.hidden, s.heads, s.kv_heads, s.head_dim, s.vocab, s.max_context, s.tied) == \
        (30, 576, 9, 3, 64, 49152, 8192, True)
    assert kv.kv_bytes(s, 1) == 2 * 30 * 3 * 64 * 2


def test_share_curve_and_crossover():
    cfg = dict(model_type="llama", num_hidden_layers=4, hidden_size=64, intermediate_size=128,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=65536)
    spec = spec_from_config(cfg)
    per_tok = kv.kv_bytes(spec, 1)  # 2 × 4 × 2 × 16 × 2 = 512 B
    assert per_tok == 512
    c = kv.share_curve(spec, weight_bytes=1_000_000, cache_type="f16")
    ctx = [r["context"] for r in c["rows"]]
    assert ctx[0] == 512 and ctx[-1] == 65536
    shares = [r["kv_share"] for r in c["rows"]]
    assert shares == sorted(shares) and 0 < shares[0] < shares[-1] < 1
    x = c["crossover_context"]
    assert kv.kv_bytes(spec, x - 1) < 1_000_000 <= kv.kv_bytes(spec, x)
    q4 = kv.share_curve(spec, 1_000_000, "q4_0")
    assert q4["kv_bytes_per_token"] == pytest.approx(per_tok * 18 / 32 / 2)
    assert q4["crossover_context"] > x


def test_unknown_cache_type():
    from slm.errors import SlmError

    spec = spec_from_config(dict(model_type="llama", num_hidden_layers=2, hidden_size=64,
                                 intermediate_size=128, num_attention_heads=4, vocab_size=256))
    with pytest.raises(SlmError, match="q8_0"):
        kv.kv_bytes(spec, 10, "q5_1")


def test_head_size_16_skips_quantized_kv_with_the_reason(tiny, tmp_path):
    """head_dim 16: llama.cpp's q8_0/q4_0 caches need heads in whole 32-value blocks; the type is skipped
    with that reason (no attempt, no exception), f16 is still measured."""
    from slm.quant.gguf_write import write_gguf

    d = tiny("llama", num_hidden_layers=2, max_position_embeddings=512)  # 64 / 4 heads = 16
    g = write_gguf(d, tmp_path / "m.gguf", "f32")
    spec = spec_from_gguf(g)
    skipped = []
    assert kv.measure_llamacpp(g, spec, [256], "q8_0", threads=1, skipped=skipped) == []
    assert skipped[0]["cache_type"] == "q8_0" and "multiple of its 32-value block" in skipped[0]["reason"]
    assert "16 wide" in skipped[0]["reason"]
    rows = kv.measure_llamacpp(g, spec, [256], "f16", threads=1, skipped=skipped)
    assert rows[0]["kv_cache"] > 0 and len(skipped) == 1
    assert kv.unusable_reason(spec_from_config(dict(model_type="qwen3", num_hidden_layers=2, hidden_size=64,
                                                    intermediate_size=128, num_attention_heads=4,
                                                    vocab_size=256, head_dim=32)), "q8_0") is None
