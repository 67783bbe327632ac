"""`slm demo`: finished steps are skipped on a re-run, an interrupted training step counts as not done,
unknown steps are refused, and reports/index.html links every step's report."""

from __future__ import annotations

import json

import pytest

from slm.cli.demo import DemoArgs, _done, run_demo, steps
from slm.errors import SlmError


def test_unknown_step_is_refused(tmp_path):
    with pytest.raises(SlmError, match="unknown demo step"):
        run_demo(DemoArgs(tmp_path, only="import,tarin"))


def test_interrupted_run_is_not_done(tmp_path):
    from slm.record import write_record

    assert not _done(tmp_path / "missing")
    write_record(tmp_path, "train", {}, result={"interrupted": True})
    assert not _done(tmp_path)
    write_record(tmp_path, "train", {}, result={"interrupted": False})
    assert _done(tmp_path)


def test_plan_covers_the_whole_lab(tmp_path):
    names = [s.name for s in steps({"root": tmp_path, "models": tmp_path / "m", "runs": tmp_path / "r"})]
    assert names == ["import", "info", "expand", "data", "train", "merge", "eval", "ablate", "export",
                     "profile", "profile-base", "plan", "compare-expand", "compare-profiles"]


@pytest.mark.slow
def test_first_steps_publish_reports_and_rerun_skips(tmp_path, capsys):
    assert run_demo(DemoArgs(tmp_path, only="import,info")) == 0
    base, info = tmp_path / "models" / "smollm2-135m", tmp_path / "runs" / "info"
    assert (base / "model.safetensors").is_file() or any(base.glob("*.safetensors"))
    figs = {f["name"]: f for f in json.loads((info / "slm.json").read_text())["result"]["figures"]}
    assert figs["layers"]["value"] == 30 and figs["layers"]["how"] == "analytic"
    assert (tmp_path / "reports" / "02-info" / "index.html").is_file()
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "02-info/index.html" in index
    stamp = (base / "slm.json").stat().st_mtime_ns
    capsys.readouterr()
    assert run_demo(DemoArgs(tmp_path, only="import,info")) == 0
    assert capsys.readouterr().out.count("already done") == 2
    assert (base / "slm.json").stat().st_mtime_ns == stamp  # nothing rewritten
