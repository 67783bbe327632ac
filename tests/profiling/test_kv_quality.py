"""The sweep's KV-cache quality on a tiny random Llama: each cache type against the f16 cache on the same
weights and tokens, and the plan reading it."""

from __future__ import annotations

import numpy as np
import pytest

from slm.errors import SlmError
from slm.profiling.sweep import SweepArgs, run_kv_quality


def test_kv_cache_quality_against_f16(tiny, tmp_path):
    from slm.quant.gguf_write import write_gguf

    g = write_gguf(tiny("llama", head_dim=32), tmp_path / "t.gguf", "f32")
    args = SweepArgs(types=("f32",), threads=1, kv_types=("f16", "q8_0", "q4_0"), kv_ctx=64, kv_chunks=3)
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, 256, 3 * 64)]  # no tokenizer in a tiny
    kq = run_kv_quality(g, "f32", args, max_context=4096, progress=lambda m: None, tokens=tokens)
    rows = {r["kv_type"]: r for r in kq["rows"]}
    assert list(rows) == ["f16", "q8_0", "q4_0"] and kq["reference"] == "f16"
    assert rows["f16"]["kld"] == 0.0 and all(r["flash_attn"] and r["context"] == 64 for r in rows.values())
    # fewer bits in the cache, a larger divergence from the f16 cache, each with an interval
    assert 0 < rows["q8_0"]["kld"] < rows["q4_0"]["kld"]
    assert all(0 < rows[t]["kld_ci95"] < rows[t]["kld"] for t in ("q8_0", "q4_0"))
    assert rows["q8_0"]["positions"] == 3 * 32  # the second half of each window
    # what llama.cpp allocated: q8_0 is 34/32 bytes a value, q4_0 18/32, f16 2 (ggml block sizes); its log
    # prints MiB to two decimals, coarse on a tiny cache
    assert rows["q8_0"]["kv_bytes"] / rows["f16"]["kv_bytes"] == pytest.approx(17 / 32, rel=0.03)
    assert rows["q4_0"]["kv_bytes"] / rows["f16"]["kv_bytes"] == pytest.approx(9 / 32, rel=0.03)
    assert "flash attention" in kq["how"]
    # the plan reads these rows: a cache type with its KLD is ranked by it, one without is unknown
    from slm.profiling.plan import PlanArgs, candidates
    from slm.record import write_record
    from slm.spec import load_spec

    sweep = {"rows": [{"type": "f16", "kld_vs_ref": 0.0, "ppl": 9.0, "reference": "f16"}],
             "kv_quality": {**kq, "rows": [r for r in kq["rows"] if r["kv_type"] != "q4_0"]}}
    (tmp_path / "p").mkdir()
    write_record(tmp_path / "p", "profile", {}, result={"sweep": sweep})
    plan_rows = candidates(load_spec(g),
                           PlanArgs(device="jetson-orin-nano-8gb", context=64, types=("f16",),
                                    quality=str(tmp_path / "p" / "slm.json")))
    by_kv = {r["kv_type"]: r for r in plan_rows}
    assert by_kv["q8_0"]["kld"] == pytest.approx(rows["q8_0"]["kld"]) and by_kv["f16"]["kld"] == 0.0
    assert by_kv["q4_0"]["kld"] is None and by_kv["q4_0"]["quality_how"] == "unknown"


def test_kv_quality_args():
    with pytest.raises(SlmError, match="KV-cache quality"):
        SweepArgs(kv_ctx=8)
