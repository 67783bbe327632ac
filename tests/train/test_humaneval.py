"""HumanEval: canonical-solution loss (paired between models) and greedy pass@1 by the package's harness."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slm.errors import SlmError
from slm.train.humaneval import HumanEvalArgs, check_tokenizer, execute, humaneval, problems, solution_losses


def test_the_harness_passes_canonical_solutions_and_fails_wrong_ones():
    probs = problems(3)
    assert [p["task_id"] for p in probs] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert len(problems()) == 164
    args = HumanEvalArgs(mode="pass", timeout=5.0)
    assert execute(probs, [p["canonical_solution"] for p in probs], args) == [1, 1, 1]
    assert execute(probs[:2], ["    return None\n", "    while True:\n        pass\n"],
                   HumanEvalArgs(mode="pass", timeout=1.0)) == [0, 0]  # wrong, and timed out


def test_solution_loss_is_the_loss_of_the_solution_tokens_alone(tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_lm()
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    probs = problems(3)
    got = solution_losses(model, tok, probs, HumanEvalArgs(batch=2), torch.device("cpu"))
    for p, losses in zip(probs, got):
        # the byte tokenizer: one token per byte, so the solution starts at len(prompt bytes)
        ids = tok(p["prompt"] + p["canonical_solution"], add_special_tokens=False)["input_ids"]
        start = len(p["prompt"].encode())
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        want = F.cross_entropy(logits[start - 1:-1], torch.tensor(ids[start:]), reduction="none")
        assert len(losses) == len(p["canonical_solution"].encode())
        assert torch.allclose(torch.tensor(losses), want, atol=1e-4)
    row = humaneval(model, tok, HumanEvalArgs(mode="pass", problems=2, max_new_tokens=4, progress=False),
                    torch.device("cpu"))
    assert row["problems"] == 2 and row["pass@1"]["n"] == 2 and row["items"]["pass@1"] == [0, 0]
    assert row["pass@1"]["ci95"][0] == 0 and 0 < row["pass@1"]["ci95"][1] < 1  # Wilson at 0/2
    assert math.isclose(row["loss"], sum(row["_tokens"]) / len(row["_tokens"])) and row["loss_se"] > 0


def test_humaneval_refuses_bad_input(tmp_path):
    with pytest.raises(SlmError, match="no tokenizer"):
        check_tokenizer(tmp_path)
    with pytest.raises(SlmError, match="--humaneval"):
        HumanEvalArgs(mode="pass@10")


def test_slm_eval_humaneval_pairs_models_and_counts_flips(tiny_lm, tmp_path, capsys):
    import json

    from slm.cli import main

    a, b = tiny_lm(), tiny_lm(seed=1)
    out = tmp_path / "ev"
    assert main(["eval", str(a), str(b), "--humaneval", "pass", "--humaneval-problems", "2", "--out",
                 str(out)]) == 0
    rec = json.loads((out / "slm.json").read_text())["result"]
    ch = rec["changes"][0]["humaneval"]
    rows = rec["matrix"]
    assert math.isclose(ch["change"], rows[1]["humaneval"]["loss"] - rows[0]["humaneval"]["loss"])
    assert ch["se_how"] == "paired" and ch["flips"]["pass@1"]["n"] == 2
    assert "HumanEval" in (out / "report.html").read_text() and "pass@1" in capsys.readouterr().out
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((a / "config.json").read_text())
    assert main(["eval", str(bare), "--humaneval", "loss"]) == 2  # no tokenizer: one line, before any work


def test_a_gguf_scores_like_its_hf_source_through_llama_cpp(tiny, tmp_path, capsys):
    """Parity: the f32 GGUF of a model gives the same canonical-solution losses through llama.cpp as the HF
    model through torch (same tokens, same logits to f32 rounding), and `slm eval HF GGUF` pairs them."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slm.cli import main
    from slm.quant.gguf_write import write_gguf
    from slm.quant.runtimes import open_gguf
    from slm.train.humaneval import gguf_humaneval
    from tests.test_conformance import VOCAB, save_bpe_tokenizer

    path = tiny("llama", vocab_size=VOCAB, max_position_embeddings=1024)
    save_bpe_tokenizer(path)  # a byte-level BPE with merges, as llama.cpp's BPE needs
    gguf = write_gguf(path, tmp_path / "m.gguf", "f32", pre_tokenizer="gpt-2")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    args = HumanEvalArgs(mode="pass", problems=3, max_new_tokens=8, progress=False)
    want = humaneval(model, tok, args, torch.device("cpu"))
    with open_gguf(gguf, 1024, exact=True, threads=1) as llm:
        got = gguf_humaneval(llm, args)
    assert len(got["_tokens"]) == len(want["_tokens"]) == want["tokens"]
    assert torch.allclose(torch.tensor(got["_tokens"]), torch.tensor(want["_tokens"]), atol=1e-3)
    assert got["items"]["pass@1"] == want["items"]["pass@1"] and got["pass@1"]["n"] == 3
    out = tmp_path / "ev"
    assert main(["eval", str(path), str(gguf), "--humaneval", "loss", "--humaneval-problems", "2", "--out",
                 str(out)]) == 0
    ch = json.loads((out / "slm.json").read_text())["result"]["changes"][0]["humaneval"]
    assert ch["se_how"] == "paired" and abs(ch["change"]) < 1e-3
    # a GGUF carries no torch model: the measures that need one are refused in one line, before any work
    capsys.readouterr()
    assert main(["eval", str(gguf), "--humaneval", "loss", "--probe", "instruct"]) == 2
    assert "GGUF is scored on --humaneval alone" in capsys.readouterr().err
