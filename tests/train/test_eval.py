"""slm eval: perplexity matrix over stages, OP and BWT."""

from __future__ import annotations

import json
import math

import pytest

from slm.cli import main
from slm.errors import SlmError
from slm.train.evaluate import forgetting


def test_op_bwt_by_hand():
    # stage 0 learned "general", stage 1 learned "code"; scores are −loss (higher is better)
    f = forgetting([{"general": -2.0, "code": -3.0}, {"general": -2.5, "code": -2.2}], ["general", "code"])
    assert math.isclose(f["op"], (-2.5 - 2.2) / 2)
    assert math.isclose(f["bwt"], -0.5)  # general got worse by 0.5 nats: forgetting
    f3 = forgetting([{"a": -1.0, "b": -4, "c": -4}, {"a": -1.2, "b": -2, "c": -4},
                     {"a": -1.1, "b": -2.5, "c": -1}],
                    ["a", "b", "c"])
    assert math.isclose(f3["bwt"], ((-1.1 + 1.0) + (-2.5 + 2.0)) / 2)


def test_slm_eval_cli(tiny_lm, tiny_data, tmp_path, capsys):
    data, _ = tiny_data
    a, b = tiny_lm(), tiny_lm(seed=1)
    out = tmp_path / "ev"
    assert main(["eval", str(a), str(b), "--data", str(data), "--tasks", "prose,code", "--seq-len", "32",
                 "--tokens", "256", "--out", str(out)]) == 0
    rec = json.loads((out / "slm.json").read_text())
    rows = rec["result"]["matrix"]
    assert len(rows) == 2 and set(rows[0]) == {"code", "prose"}
    assert all(r[k]["ppl"] > 1 for r in rows for k in r)
    f = rec["result"]["forgetting"]
    assert math.isclose(f["bwt"], -rows[1]["prose"]["loss"] + rows[0]["prose"]["loss"])
    # per set: the change against the first model (paired) and prose's forgetting, BWT beside its part
    ch = rec["result"]["changes"][0]["prose"]
    assert math.isclose(ch["change"], rows[1]["prose"]["loss"] - rows[0]["prose"]["loss"]) and ch["se"] > 0
    per = f["per_set"]["prose"]
    assert math.isclose(per["change"], f["bwt"]) and per["se"] > 0 and per["from_stage"] == 0
    html = (out / "report.html").read_text()
    assert "Change per set" in html and "<svg" in html and "Forgetting per set" in html and "±" in html
    names = {x["name"] for x in rec["result"]["figures"]}
    assert "forgetting.prose" in names and any(n.endswith("prose.loss_change") for n in names)
    assert (out / "report.html").is_file() and "BWT" in capsys.readouterr().out
    assert main(["eval", str(a), "--data", str(data), "--sets", "nope"]) == 2
    with pytest.raises(SystemExit):
        main(["eval"])


def test_flips_count_lost_and_gained_items_with_mcnemar():
    from slm.train.evaluate import changes, flips

    f = flips([1, 1, 1, 0, 1, 0], [0, 0, 1, 0, 1, 1])
    assert (f["lost"], f["gained"], f["n"]) == (2, 1, 6) and math.isclose(f["p"], 1.0)
    f = flips([1] * 12 + [0], [0] * 12 + [0])
    assert f["lost"] == 12 and f["p"] < 0.001
    row0 = {"p": {"loss": 1.0, "loss_se": 0.1, "items": {"exact": [1, 0]}}}
    row1 = {"p": {"loss": 1.2, "loss_se": 0.1, "items": {"exact": [0, 0]}}}
    c = changes(row0, row1)["p"]
    assert c["flips"]["exact"]["lost"] == 1 and c["se_how"].startswith("independent")
    with pytest.raises(SlmError, match="same items"):
        flips([1], [1, 0])
