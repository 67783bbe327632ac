import json

import pytest
import torch

from slm.errors import SlmError
from slm.io import load_model
from slm.spec import load_spec, spec_from_config


@pytest.mark.parametrize("kind,tied", [("llama", True), ("llama", False), ("qwen2", False), ("qwen3", True)])
def test_param_count_matches_the_real_tensors(tiny, kind, tied):
    path = tiny(kind, tied)
    model = load_model(path)
    # named_parameters() lists a tied weight once, as the spec counts it
    real = sum(p.numel() for p in model.parameters())
    assert load_spec(path).params == real


def test_kv_bytes_and_memory_share(tiny):
    s = load_spec(tiny("qwen3"))
    assert s.head_dim == 32  # explicit head_dim, not hidden/heads
    assert s.kv_bytes_per_token() == 2 * 6 * 2 * 32 * 2
    # summary: per cache type, element sizes from slm.gguf (q8_0 / q4_0 blocks of 32 values: 34 and 18 bytes)
    assert s.summary()["kv_bytes_per_token"] == {"f16": 1536, "q8_0": 1536 * 34 / 64, "q4_0": 1536 * 18 / 64}
    m = s.memory_at(1000)
    assert m["kv_cache"] == 1000 * s.kv_bytes_per_token()
    assert m["kv_share"] == pytest.approx(m["kv_cache"] / (m["kv_cache"] + m["weights"]))
    c = s.kv_crossover_context()
    assert s.kv_bytes_per_token() * c >= s.weight_bytes() > s.kv_bytes_per_token() * (c - 1)


@pytest.mark.parametrize("config,needle", [
    ({"model_type": "gpt2"}, "LayerNorm"),
    ({"model_type": "mixtral"}, "mixture-of-experts"),
    ({"model_type": "qwen2", "num_experts": 8}, "mixture-of-experts"),
    ({"model_type": "bert"}, "not a Llama-family"),
])
def test_refuses_other_architectures(config, needle):
    with pytest.raises(SlmError, match=needle):
        spec_from_config(config)


@pytest.mark.slow
def test_real_model_numbers(real_model):
    s = load_spec(real_model)
    assert (s.layers, s.heads, s.kv_heads, s.hidden, s.head_dim, s.tied) == (30, 9, 3, 576, 64, True)
    assert round(s.params / 1e6, 1) == 134.5
    assert s.kv_bytes_per_token() == 2 * 30 * 3 * 64 * 2 == 23040
    assert s.params == sum(p.numel() for p in load_model(real_model).parameters())


@pytest.mark.slow
def test_info_cli_json(real_model, capsys):
    from slm.cli import main

    assert main(["info", str(real_model), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kv_bytes_per_token"]["f16"] == 23040
    assert [m["context"] for m in out["memory"]] == [2048, 8192]  # 32k is above SmolLM2's 8k max context
    assert 0 < out["memory"][0]["kv_share"] < out["memory"][1]["kv_share"] < 1


def test_info_cli_error_is_one_line(tmp_path, capsys):
    from slm.cli import main

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unsupported architecture 'gpt2'") and "\n" not in err
    torch.manual_seed(0)
