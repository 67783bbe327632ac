"""slm eval: perplexity matrix over stages, OP and BWT."""

from __future__ import annotations

import json
import math

import pytest

from slm.cli import main
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
    assert (out / "report.html").is_file() and "BWT" in capsys.readouterr().out
    assert main(["eval", str(a), "--data", str(data), "--sets", "nope"]) == 2
    with pytest.raises(SystemExit):
        main(["eval"])
