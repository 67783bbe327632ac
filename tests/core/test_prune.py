"""slm prune: ShortGPT block influence on tiny random models (fast)."""

from __future__ import annotations

import json

import pytest
import torch

from slm.errors import SlmError
from slm.io import load_model
from slm.surgery.expand import ExpandArgs, expand
from slm.surgery.prune import PruneArgs, block_influence, heldout_windows, prune

FAST = dict(tokens=128, seq_len=32)


def test_block_influence_equals_hand_computation(tiny):
    """BI of every block = 1 − mean over tokens of cos(hidden state before, after), computed here from HF's
    own hidden_states (an independent path from prune's forward hooks)."""
    d = tiny("llama")
    m = load_model(d).eval()
    windows, _ = heldout_windows(d, PruneArgs(drop=1, **FAST), m.config.vocab_size)
    bi, _ = block_influence(m, windows)
    with torch.no_grad():
        hs = [m(w, output_hidden_states=True).hidden_states for w in windows]
    # hidden_states[i] enters block i; [i + 1] leaves it (the last entry is after the final norm)
    for i in (0, 3):
        cos = torch.cat([torch.nn.functional.cosine_similarity(h[i][0].double(), h[i + 1][0].double(), dim=-1)
                         for h in hs])
        assert bi[i] == pytest.approx(1 - cos.mean().item(), abs=1e-9)
    assert len(bi) == 6 and all(0 < b < 2 for b in bi)


def test_planted_identity_blocks_are_dropped(tiny, tmp_path):
    """An expanded model's copies (zero o_proj/down_proj) have influence 0 and are the ones dropped: the
    pruned model is the original again (same source layers, same perplexity)."""
    x = tmp_path / "x8"
    expand(tiny("qwen2"), x, ExpandArgs(groups=2, copies=1, parity=False))  # 6 → 8 layers, copies at 3 and 7
    out = tmp_path / "pruned"
    res = prune(x, out, PruneArgs(drop=2, **FAST))
    assert res["dropped_layers"] == [3, 7]
    assert max(res["influences"][3], res["influences"][7]) < 1e-6 < min(
        b for i, b in enumerate(res["influences"]) if i not in (3, 7))
    h = res["heldout"]
    assert h["perplexity_after"] == pytest.approx(h["perplexity_before"], rel=1e-5)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 6 and len(cfg["layer_types"]) == 6  # per-layer list remapped
    rec = cfg["slm_surgery"]
    assert rec["source_layers"] == [0, 1, 2, 3, 4, 5] and rec["new_layers"] == []
    assert [s["method"] for s in rec["history"]] == ["llama_pro", "prune"]
    assert rec["history"][-1]["dropped_layers"] == [3, 7] and len(rec["history"][-1]["influences"]) == 8
    m = load_model(out)
    assert [layer.self_attn.layer_idx for layer in m.model.layers] == list(range(6))
    slm = json.loads((out / "slm.json").read_text())
    assert slm["result"]["heldout"]["perplexity_after"] == h["perplexity_after"]
    html = (out / "report.html").read_text()
    # labelled by the registry
    assert "Block influence" in html and "held-out perplexity after pruning" in html


def test_pruned_model_loads_with_fewer_layers(tiny, tmp_path):
    res = prune(tiny("llama"), tmp_path / "p", PruneArgs(drop=2, **FAST))
    assert load_model(tmp_path / "p").config.num_hidden_layers == 4 == res["num_layers"]["after"]
    assert res["heldout"]["perplexity_after"] > 0


@pytest.mark.parametrize("k", [0, -1, 6, 9])
def test_refuses_bad_drop(tiny, tmp_path, k):
    d = tiny("llama")
    with pytest.raises(SlmError) as e:
        prune(d, tmp_path / "p", PruneArgs(drop=k, **FAST))
    assert "--drop" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "p").exists()


def test_output_is_guarded(tiny, tmp_path):
    d = tiny("llama")
    with pytest.raises(SlmError):  # the input itself, even with --force
        prune(d, d, PruneArgs(drop=1, force=True, **FAST))
    with pytest.raises(SlmError):  # inside the input
        prune(d, d / "sub", PruneArgs(drop=1, force=True, **FAST))
    (tmp_path / "p").mkdir()
    with pytest.raises(SlmError, match="--force"):
        prune(d, tmp_path / "p", PruneArgs(drop=1, **FAST))


def test_cli_prune(tiny, tmp_path, capsys):
    from slm.cli import main

    d = tiny("llama")
    assert main(["prune", str(d), str(tmp_path / "p"), "--drop", "1", "--tokens", "64",
                 "--seq-len", "32"]) == 0
    out = capsys.readouterr().out
    assert "6 → 5 layers" in out and "held-out perplexity" in out
    assert main(["prune", str(d), str(tmp_path / "q"), "--drop", "6"]) == 2
    assert "error: --drop 6 leaves no blocks" in capsys.readouterr().err
