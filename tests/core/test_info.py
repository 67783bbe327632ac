"""slm.info.write_info: a model's spec as an output folder (report.html + slm.json), never overwritten by
accident."""

from __future__ import annotations

import json

import pytest

from slm.errors import SlmError
from slm.info import write_info
from slm.spec import load_spec


def test_writes_report_and_record(tiny, tmp_path):
    model = tiny("llama", name="tiny-llama")
    out = tmp_path / "info"
    rec = write_info(model, out)
    saved = json.loads((out / "slm.json").read_text())
    assert saved["kind"] == rec["kind"] == "info" and saved["args"] == {"model": str(model)}
    s = load_spec(model)
    figs = {f["name"]: f for f in saved["result"]["figures"]}
    assert figs["layers"]["value"] == 6 and figs["kv_heads"]["value"] == 2
    assert figs["params"]["value"] == s.params and figs["params"]["how"] == "analytic"
    assert figs["kv_bytes_per_token"]["value"] == s.kv_bytes_per_token()
    assert figs["kv_bytes_per_token"]["unit"] == "bytes" and figs["kv_bytes_per_token"]["better"] == "lower"
    html = (out / "report.html").read_text()
    assert "tiny-llama: model spec" in html and "Memory at context" in html
    # the info page draws what it computes
    assert "Memory against context" in html and html.count("<svg") == 1
    # where the KV cache outgrows the weights a device gets, not only the stored fp32 ones
    from slm.gguf_mix import fallbacks_for

    q4 = fallbacks_for(s, "q4_k_m")["tensor_bytes"]
    cross = figs["kv_crossover_q4_k_m"]["value"]
    assert s.kv_bytes_per_token(2) * (cross - 1) <= q4 < s.kv_bytes_per_token(2) * cross
    assert cross < figs["kv_crossover"]["value"]  # smaller weights: the KV cache catches up sooner
    assert "Where the f16 KV cache outgrows the weights" in html and "GGUF q4_k_m" in html
    assert saved["result"]["kv_crossover"]["GGUF q4_k_m"] == cross


def test_refuses_existing_output_without_force(tiny, tmp_path):
    model, out = tiny(), tmp_path / "info"
    write_info(model, out, title="first")
    with pytest.raises(SlmError, match="already exists"):
        write_info(model, out)
    write_info(model, out, force=True, title="second")
    assert "second" in (out / "report.html").read_text()
