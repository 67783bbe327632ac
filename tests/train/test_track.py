"""Trackers: a run's loss curve read back from its TensorBoard event file and its offline W&B run; unknown or
uninstalled trackers refused in one line before any work."""

from __future__ import annotations

import importlib.util
import json

import pytest

from slm.errors import SlmError
from slm.train import track
from slm.train.args import load_recipe
from slm.train.loop import train


def _args(model, data, out, *extra):
    return load_recipe(None, [f"model={model}", f"data={data}", f"out={out}", "steps=5", "seq_len=48",
                              "global_batch=2", "micro_batch=2", "lr=3e-3", "progress=false", "report=false",
                              "eval_every=2", "eval_tokens=200", *extra])


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_tensorboard_event_file_holds_the_loss_curve(tiny_lm, tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data, _ = tiny_data
    run = tmp_path / "run"
    train(_args(tiny_lm(), data, run, "report_to=tensorboard", "trainable=full"))
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    lines = _metrics(run)
    steps = [x for x in lines if "loss" in x]
    got = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in got] == [x["step"] for x in steps] == [1, 2, 3, 4, 5]
    assert [v for _, v in got] == pytest.approx([x["loss"] for x in steps], rel=1e-6)  # float32 in the file
    for tag in ("train/lr", "train/grad_norm", "train/tok_s"):
        assert len(acc.Scalars(tag)) == 5
    evals = [x for x in lines if "eval" in x]
    code = acc.Scalars("eval/code/loss")
    assert [e.step for e in code] == [x["step"] for x in evals] == [0, 2, 4, 5]
    assert [e.value for e in code] == pytest.approx([x["eval"]["code"]["loss"] for x in evals], rel=1e-6)
    assert acc.Scalars("figures/steps")[0].value == 5


def test_wandb_runs_offline_unless_set_up(tiny_lm, tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    monkeypatch.setenv("WANDB_SILENT", "true")
    data, _ = tiny_data
    run = tmp_path / "run"
    train(_args(tiny_lm(), data, run, "report_to=wandb", "trainable=full", "steps=2", "eval_every=0"))
    import wandb

    wandb.teardown()  # finish() can return before wandb's service process has written its log; this waits
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1  # offline: nothing uploaded
    # wandb 0.31 ships no reader for its .wandb log; its records hold each key and JSON value as plain text
    data = next(offline[0].glob("*.wandb")).read_bytes()
    losses = [x["loss"] for x in _metrics(run) if "loss" in x]
    assert len(losses) == 2 and all(json.dumps(v).encode() in data for v in losses)
    assert b"train/loss" in data and b"figures/steps" in data


def test_unknown_or_missing_tracker_is_one_line_before_work(tiny_lm, tiny_data, tmp_path, monkeypatch):
    data, _ = tiny_data
    run = tmp_path / "run"
    with pytest.raises(SlmError, match="report_to='mlflow': use one of none, tensorboard, wandb"):
        _args(tiny_lm(), data, run, "report_to=mlflow")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(SlmError, match=r"pip install 'slm-lab\[track\]'"):
        _args(tiny_lm(), data, run, "report_to=wandb")
    assert not run.exists()


def test_scalars_of_metrics_lines():
    line = {"step": 3, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.5, "tok_s": 100, "tokens": 9}
    assert track.scalars(line) == {"train/loss": 2.5, "train/lr": 1e-3, "train/grad_norm": 0.5,
                                   "train/tok_s": 100.0}
    assert track.scalars({"step": 0, "eval": {"code": {"loss": 1.0, "ppl": 2.718, "tokens": 5}}}) == {
        "eval/code/loss": 1.0, "eval/code/ppl": 2.718}
