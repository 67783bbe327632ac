"""The IFEval-verified probe: deterministic prompts of IFEval's kinds, IFEval's own checkers, Wilson
intervals, per-prompt flips."""

from __future__ import annotations

import json

import pytest

from slm.errors import SlmError
from slm.train.ifeval import IFEvalArgs, build_prompts, check, scores


def test_prompts_are_deterministic_and_never_pair_conflicting_instructions():
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    a, b = build_prompts(IFEvalArgs(prompts=40)), build_prompts(IFEvalArgs(prompts=40))
    assert a == b and build_prompts(IFEvalArgs(prompts=40, seed=1)) != a
    kinds = {k for r in a for k in r["instruction_id_list"]}
    assert len(kinds) >= 8 and any(len(r["instruction_id_list"]) == 2 for r in a)
    for r in a:
        ids = r["instruction_id_list"]
        if len(ids) == 2:
            assert ids[1] not in INSTRUCTION_CONFLICTS.get(ids[0], set()) and ids[0] != ids[1]
    # the instruction's own text is IFEval's, appended to a probe task
    assert any("in all lowercase letters" in r["prompt"] or "JSON" in r["prompt"] for r in a)


def test_checkers_score_strict_and_loose_like_ifeval():
    rows = [{"prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
            {"prompt": "p", "instruction_id_list": ["detectable_format:json_format"], "kwargs": [{}]},
            {"prompt": "p", "instruction_id_list": ["change_case:english_lowercase", "keywords:existence"],
             "kwargs": [{}, {"keywords": ["river"]}]}]
    res = scores(rows, check(rows, ["no commas here", "Sure! Here it is:\n{\"a\": 1}",
                                    "the river is long and wide"]))
    # JSON after a first line: fails strict, passes loose (IFEval drops the first line)
    assert res["items"]["prompt_strict"] == [1, 0, 1] and res["items"]["prompt_loose"] == [1, 1, 1]
    assert res["instruction_strict"]["k"] == 3 and res["instruction_strict"]["n"] == 4
    lo, hi = res["prompt_strict"]["ci95"]
    assert lo < 2 / 3 < hi
    bad = scores(rows[:1], check(rows[:1], ["a, b"]))
    assert bad["prompt_strict"]["k"] == 0 and bad["prompt_strict"]["ci95"][0] == 0
    with pytest.raises(SlmError):
        IFEvalArgs(prompts=0)


def test_slm_eval_ifeval_reports_rates_and_flips(tiny_lm, tmp_path):
    from slm.cli import main

    a, b = tiny_lm(), tiny_lm(seed=1)
    out = tmp_path / "ev"
    assert main(["eval", str(a), str(b), "--ifeval", "3", "--out", str(out)]) == 0
    res = json.loads((out / "slm.json").read_text())["result"]
    v = res["matrix"][0]["ifeval"]
    assert v["prompts"] == 3 and v["prompt_strict"]["n"] == 3 and len(v["items"]["prompt_strict"]) == 3
    f = res["changes"][0]["ifeval"]["flips"]["prompt_strict"]
    assert f["n"] == 3 and 0 <= f["p"] <= 1
    assert "IFEval" in (out / "report.html").read_text()
    assert main(["eval", str(a), "--ifeval", "-1"]) == 2
