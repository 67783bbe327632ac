"""LLaMA Pro expansion is function-preserving, recorded, and refuses bad input."""

import json

import pytest
import torch

from slm.errors import SlmError
from slm.io import TensorReader, load_model
from slm.surgery.expand import ExpandArgs, expand, plan_expansion


def test_plan_matches_llama_pro_7b():
    src, new = plan_expansion(32, 8, 1)  # LLaMA-2-7B → LLaMA Pro 8B: 40 blocks
    assert len(src) == 40 and new == [4, 9, 14, 19, 24, 29, 34, 39]
    assert [src[j] for j in new] == [3, 7, 11, 15, 19, 23, 27, 31]
    src, new = plan_expansion(6, 2, 2)
    assert src == [0, 1, 2, 1, 2, 3, 4, 5, 4, 5] and new == [3, 4, 8, 9]


def _ids(vocab, n=3, length=12):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (1, length), generator=g) for _ in range(n)]


def assert_same_function(a_path, b_path, vocab, gen_tokens=64, prompts=None):
    a, b = load_model(a_path).eval(), load_model(b_path).eval()
    prompts = prompts or _ids(vocab)
    with torch.no_grad():
        for ids in prompts:
            assert torch.equal(a(ids).logits, b(ids).logits)  # bit-identical fp32 logits
        ids = prompts[0]
        kw = dict(max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, do_sample=False, use_cache=True)
        ga, gb = a.generate(ids, **kw), b.generate(ids, **kw)
    assert ga.shape[1] == ids.shape[1] + gen_tokens
    assert torch.equal(ga, gb)  # greedy decoding with the KV cache: layer_idx must be right
    return b


@pytest.mark.parametrize("kind,tied", [("llama", True), ("llama", False), ("qwen2", True), ("qwen2", False),
                                       ("qwen3", True), ("qwen3", False)])
def test_expansion_preserves_the_function(tiny, tmp_path, kind, tied):
    src = tiny(kind, tied)
    out = tmp_path / "expanded"
    res = expand(src, out, ExpandArgs(groups=3, copies=1, parity=False))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 9 and cfg["tie_word_embeddings"] == tied
    assert cfg["slm_surgery"]["new_layers"] == [2, 5, 8]
    assert_same_function(src, out, vocab=256)
    if kind == "qwen2":
        assert len(cfg["layer_types"]) == 9
    # exactly the recorded new layers have zero o_proj / down_proj
    r = TensorReader(out)
    new = set(res["record"]["new_layers"])
    for j in range(9):
        for t in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            w = r.get(f"model.layers.{j}.{t}")
            assert (w.abs().sum() == 0).item() == (j in new), (j, t)
    if tied:
        assert "lm_head.weight" not in r


def test_new_layers_record_and_layer_types_remap(tiny, tmp_path):
    src = tiny("qwen2", layer_types=["sliding_attention", "full_attention"] * 3, use_sliding_window=True,
               sliding_window=16, max_window_layers=6)
    out = tmp_path / "x"
    expand(src, out, ExpandArgs(groups=2, copies=1, parity=False))
    cfg = json.loads((out / "config.json").read_text())
    rec = cfg["slm_surgery"]
    assert rec["source_layers"] == [0, 1, 2, 2, 3, 4, 5, 5]
    assert rec["new_layers"] == [3, 7]
    assert cfg["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention",
                                  "sliding_attention", "full_attention", "sliding_attention",
                                  "full_attention", "full_attention"]
    slm = json.loads((out / "slm.json").read_text())
    assert slm["kind"] == "expand" and slm["result"]["record"]["new_layers"] == [3, 7]
    assert (out / "report.html").read_text().count("<svg") >= 1
    # expanding twice keeps the original indices and earlier new layers
    out2 = tmp_path / "xx"
    expand(out, out2, ExpandArgs(groups=2, copies=1, parity=False))
    rec2 = json.loads((out2 / "config.json").read_text())["slm_surgery"]
    assert rec2["source_layers"] == [0, 1, 2, 2, 2, 3, 4, 5, 5, 5]
    assert rec2["new_layers"] == [3, 4, 8, 9] and rec2["original_num_layers"] == 6


@pytest.mark.parametrize("groups,copies,msg", [(4, 1, "does not divide"), (3, 3, "exceeds the 2 blocks"),
                                               (0, 1, "must be ≥ 1")])
def test_bad_arguments_write_nothing(tiny, tmp_path, groups, copies, msg):
    src = tiny("llama")
    with pytest.raises(SlmError, match=msg):
        expand(src, tmp_path / "out", ExpandArgs(groups=groups, copies=copies))
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(tiny, tmp_path):
    src = tiny("llama")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SlmError, match="--force"):
        expand(src, out, ExpandArgs(groups=3))
    expand(src, out, ExpandArgs(groups=3, force=True, parity=False))
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 9


def test_unknown_architecture_and_corrupt_input(tiny, tmp_path):
    src = tiny("llama")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    with pytest.raises(SlmError, match="unsupported architecture"):
        expand(src, tmp_path / "o", ExpandArgs(groups=3))
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "model.safetensors").write_bytes(b"garbage!" * 10)
    with pytest.raises(SlmError, match="not a valid safetensors"):
        expand(src, tmp_path / "o", ExpandArgs(groups=3))
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("groups,layers", [(6, 36), (10, 40)])
def test_real_model_expansion_is_function_preserving(real_model, tmp_path, groups, layers):
    from transformers import AutoTokenizer

    out = tmp_path / f"x{layers}"
    res = expand(real_model, out, ExpandArgs(groups=groups, copies=1, parity=groups == 6))
    if groups == 6:  # the built-in parity check (report) agrees with the test's own
        assert res["parity"]["bit_identical"] and res["parity"]["max_abs_diff"] == 0
    tok = AutoTokenizer.from_pretrained(str(real_model))
    prompts = [tok(p, return_tensors="pt").input_ids for p in
               ["The capital of France is", "def add(a, b):\n    return",
                "Once upon a time, in a small village,"]]
    # load_model is plain AutoModelForCausalLM.from_pretrained on the saved folder
    plain = assert_same_function(real_model, out, vocab=49152, prompts=prompts)
    assert plain.config.num_hidden_layers == layers
    assert [layer.self_attn.layer_idx for layer in plain.model.layers] == list(range(layers))


def test_per_layer_keys_by_name_not_by_length(tiny, tmp_path):
    """A 3-layer model's eos_token_id [2, 0, 5] is copied as is by expand and prune; no_rope_layers (a
    per-layer key by name) follows the layers; a per-layer key of the wrong length is refused."""
    from slm.surgery.layers import remap_config
    from slm.surgery.prune import PruneArgs, prune

    src = tiny("llama", num_hidden_layers=3, eos_token_id=[2, 0, 5])
    expand(src, tmp_path / "x", ExpandArgs(groups=3, copies=1, parity=False))
    assert json.loads((tmp_path / "x" / "config.json").read_text())["eos_token_id"] == [2, 0, 5]
    prune(src, tmp_path / "p", PruneArgs(drop=1, tokens=128, seq_len=32))
    assert json.loads((tmp_path / "p" / "config.json").read_text())["eos_token_id"] == [2, 0, 5]
    cfg = {"num_hidden_layers": 3, "no_rope_layers": [1, 1, 0], "eos_token_id": [2, 0, 5]}
    out = remap_config(cfg, [0, 0, 1, 1, 2, 2], {})
    assert out["no_rope_layers"] == [1, 1, 1, 1, 0, 0] and out["eos_token_id"] == [2, 0, 5]
    with pytest.raises(SlmError, match="layer_types with 2 entries but num_hidden_layers=3"):
        remap_config({"num_hidden_layers": 3, "layer_types": ["full_attention"] * 2}, [0, 1, 2], {})
