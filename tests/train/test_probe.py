"""The instruction-following probe: prompts and split, normalisation, Wilson interval, masked answer loss,
build/probe on a tiny chat model, refusal without a chat template, and `slm eval --probe instruct`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from slm.cli import main
from slm.errors import SlmError
from slm.train.probe import (
    PROBE_SET,
    ProbeArgs,
    answer_losses,
    build_probe,
    chat_tokenizer,
    exact_match,
    extract_match,
    normalise,
    probe,
    prompt_ids,
    wilson,
)
from slm.train.probe_prompts import all_prompts, split_prompts


def test_prompts_and_split():
    rows = all_prompts()
    assert len(rows) >= 300 and len({r["prompt"] for r in rows}) == len(rows)
    assert {r["category"] for r in rows} == {"capital", "conversion", "arithmetic", "stdlib", "rewrite",
                                             "summarise", "list"}
    assert all((r["answer"] is None) == (r["kind"] == "open") for r in rows)
    held, build = split_prompts("heldout"), split_prompts("build")
    assert (len(held) + len(build) == len(rows)
            and not {r["prompt"] for r in held} & {r["prompt"] for r in build})
    assert 0.35 < len(held) / len(rows) < 0.65 and split_prompts("heldout") == held  # deterministic
    first = held[:80]
    assert sum(r["kind"] == "fact" for r in first) >= 40 and sum(r["kind"] == "open" for r in first) >= 15


def test_normalisation_and_matching():
    assert normalise("The answer: 1,000.") == "answer: 1000".replace(":", "")
    assert (exact_match("Paris.", "paris") and exact_match("**Paris**", "Paris")
            and exact_match("The Paris", "Paris"))
    assert exact_match("3000.0", "3000") and exact_match("five", "5") and exact_match("`len()`", "len")
    assert exact_match("3.5", "3.5") and not exact_match("35", "3.5") and exact_match("-4", "-4")
    assert not exact_match("The capital of France is Paris.", "Paris")  # exact is exact
    assert extract_match("The capital of France is Paris.", "Paris")
    assert extract_match("7 years is 7 * 12 = 84 months", "84") and not extract_match("84 is not 85", "84")
    assert not extract_match("Buenos\nAires", "Buenos Aires")  # first line only
    assert extract_match("The built-in function `min()` does it.", "min")


def test_wilson_interval():
    lo, hi = wilson(5, 10)  # Wilson (1927); Brown, Cai & DasGupta (2001) table values
    assert math.isclose(lo, 0.2366, abs_tol=1e-4) and math.isclose(hi, 0.7634, abs_tol=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0 and math.isclose(hi, 0.2775, abs_tol=1e-4)
    assert wilson(10, 10)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)


def test_answer_loss_masks_prompt_and_padding(tiny_lm):
    from slm.io import load_model

    path = tiny_lm()
    tok, model = chat_tokenizer(path), load_model(path).eval()
    rows = [{"prompt": "What is 2 + 3?", "reply_ids": tok("5 it is", add_special_tokens=False)["input_ids"]},
            {"prompt": "List three colours, please, and be brief about it.",
             "reply_ids": tok("red", add_special_tokens=False)["input_ids"]}]
    batched = answer_losses(model, tok, rows, ProbeArgs(batch=2), torch.device("cpu"))
    alone = []
    for r in sorted(rows, key=lambda r: len(prompt_ids(tok, r["prompt"])) + len(r["reply_ids"])):
        p, a = prompt_ids(tok, r["prompt"]), r["reply_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + a])).logits[0]
        alone += F.cross_entropy(logits[len(p) - 1:-1], torch.tensor(a), reduction="none").tolist()
    assert len(batched) == len(alone) == 10  # answer tokens only: 7 + 3 byte tokens
    assert torch.allclose(torch.tensor(batched), torch.tensor(alone), atol=1e-4)


def test_build_and_probe_tiny_chat_model(tiny_lm, tmp_path):
    base, other = tiny_lm(), tiny_lm(seed=1)
    args = ProbeArgs(prompts=6, max_new_tokens=8, batch=4)
    ref = build_probe(base, tmp_path / "probe", args)
    saved = json.loads((tmp_path / "probe" / "reference.json").read_text())
    assert len(saved["rows"]) == 6 and all(len(r["reply_ids"]) <= 8 for r in saved["rows"])
    assert (tmp_path / "probe" / "slm.json").is_file()
    f0 = probe(base, tmp_path / "probe", args)
    assert math.isclose(f0["loss"], ref["scores"]["loss"], rel_tol=1e-5) and f0["loss_se"] > 0
    assert f0["tokens"] == sum(len(r["reply_ids"]) for r in saved["rows"])
    assert f0["exact"]["n"] == sum(r["answer"] is not None for r in saved["rows"])
    lo, hi = f0["ended"]["ci95"]
    assert 0 <= lo <= f0["ended"]["rate"] <= hi <= 1
    f1 = probe(other, saved, args)  # another model finds the first one's greedy answers less likely
    assert f1["loss"] > f0["loss"] + 1.0
    with pytest.raises(SlmError, match="already exists"):
        build_probe(base, tmp_path / "probe", args)


def test_refuses_model_without_chat_template(tiny_lm, tmp_path):
    path = tiny_lm()
    (path / "chat_template.jinja").unlink()
    with pytest.raises(SlmError, match="no chat template") as e:
        build_probe(path, tmp_path / "p")
    assert "\n" not in str(e.value) and not (tmp_path / "p").exists()


def test_slm_eval_probe(tiny_lm, tiny_data, tmp_path, capsys):
    data, _ = tiny_data
    a, b = tiny_lm(), tiny_lm(seed=1)
    out = tmp_path / "ev"
    assert main(["eval", str(a), str(b), "--data", str(data), "--probe", "instruct", "--probe-prompts", "4",
                 "--seq-len", "32", "--tokens", "128", "--out", str(out)]) == 0
    res = json.loads((out / "slm.json").read_text())["result"]
    assert res["sets"][-1] == PROBE_SET and all(PROBE_SET in row for row in res["matrix"])
    assert all(0 < row[k]["loss_se"] < row[k]["loss"] for row in res["matrix"]
               for k in ("code", "prose", PROBE_SET))
    f = res["forgetting"]
    assert f["earlier_tasks"] == [PROBE_SET]  # the probe is learned by stage 0
    p0, p1 = res["matrix"][0][PROBE_SET]["loss"], res["matrix"][1][PROBE_SET]["loss"]
    assert math.isclose(f["bwt"], p0 - p1)
    assert "Instruction probe" in (out / "report.html").read_text()
    capsys.readouterr()
    assert main(["eval", str(a), "--probe", "instruct", "--probe-prompts", "2", "--json"]) == 0  # no --data
    only = json.loads(capsys.readouterr().out)
    assert only["sets"] == [PROBE_SET] and "forgetting" not in only
    assert main(["eval", str(a)]) == 2  # neither --data nor --probe


@pytest.mark.slow
def test_probe_on_the_bundled_model(real_model, tmp_path):
    """The default probe (80 held-out prompts, 32 new tokens) on SmolLM2-135M-Instruct, 1 thread: the model's
    own answers score a low loss, it ends most turns, and it gets some known answers right in its first
    line."""
    import time

    t = time.perf_counter()
    ref = build_probe(real_model, tmp_path / "probe")
    f = ref["scores"]
    print(f"\nprobe on {real_model.name}: {time.perf_counter() - t:.0f} s, loss {f['loss']:.4f} ± "
          f"{f['loss_se']:.4f} ({f['tokens']} tokens), exact {f['exact']}, first line {f['extract']}, ended "
          f"{f['ended']}")
    assert f["prompts"] == 80 and f["loss"] < 1.5 and f["ended"]["rate"] > 0.5 and f["extract"]["rate"] > 0.15
