"""Resume after kill -9 is bit-identical; torchrun (2 ranks, gloo, FSDP2) matches one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SLM = str(Path(sys.executable).parent / "slm")  # the console script installed with the package
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def _cli(model, data, out, *extra) -> list[str]:
    return [SLM, "train", f"model={model}", f"data={data}", f"out={out}", "seq_len=64",
            "global_batch=4", "micro_batch=2", "lr=3e-3", "trainable=full", "progress=false", "report=false",
            "eval_every=0", *extra]


def _losses(run: Path) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(x["step"], x["loss"]) for x in lines if "loss" in x]


def _run(cmd):
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def _popen(cmd):
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_kill9_then_resume_is_bit_identical(tiny_lm, tiny_data, tmp_path):
    data, _ = tiny_data
    model = tiny_lm()
    steps = ["steps=30", "save_every=3", "keep_last=2"]
    ref = _run(_cli(model, data, tmp_path / "ref", *steps))
    assert ref.returncode == 0, ref.stderr[-2000:]

    run = tmp_path / "run"
    proc = _popen(_cli(model, data, run, *steps))
    deadline = time.time() + 240
    while time.time() < deadline:
        m = run / "metrics.jsonl"
        if m.is_file() and len(_losses(run)) >= 10:
            break
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(_losses(run))
    assert killed_at < 30, "not killed mid-way"
    # a checkpoint being written at the moment of the kill stays a hidden temp folder, never counted
    res = _run(_cli(model, data, run, *steps) + ["--resume"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert _losses(run) == _losses(tmp_path / "ref")  # bit-for-bit: floats compared exactly
    rec = json.loads((run / "slm.json").read_text())
    assert rec["args"]["resume"] is True


def test_torchrun_two_ranks_match_one_process(tiny_lm, tiny_data, tmp_path):
    data, _ = tiny_data
    model = tiny_lm()
    steps = ["steps=3", "global_batch=4"]
    one = _run(_cli(model, data, tmp_path / "one", *steps, "micro_batch=2"))
    assert one.returncode == 0, one.stderr[-2000:]
    # exactly the README's form, `torchrun --nproc-per-node G -m slm.cli train …` (torchrun is this module's
    # script)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                "29517", "-m", "slm.cli"]
    cmd = torchrun + _cli(model, data, tmp_path / "two", *steps, "micro_batch=1")[1:]
    two = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3]
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-5 * max(1.0, abs(x))
    rec = json.loads((tmp_path / "two" / "slm.json").read_text())
    assert {f["name"]: f["value"] for f in rec["result"]["figures"]}["ranks"] == 2


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_that_resume_continues(tiny_lm, tiny_data, tmp_path, capsys, sig, code):
    """Ctrl-C and SIGTERM (timeout, Slurm, Kubernetes) save and exit 128 + signal; while the run holds its
    folder a second run into it is refused; --resume then continues from the saved step to the end."""
    from slm.cli import main
    from slm.train.checkpoint import latest

    data, _ = tiny_data
    run = tmp_path / "run"
    cmd = _cli(tiny_lm(), data, run, "steps=40")
    proc = _popen(cmd)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").is_file() and len(_losses(run)) >= 2):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    assert main(cmd[1:]) == 2  # the same command again, in this process: the folder is locked
    assert f"locked by PID {proc.pid}" in capsys.readouterr().err
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    err = proc.stderr.read()
    assert f"stopped by {sig.name} after step" in err and "--resume" in err and "Traceback" not in err
    stopped = _losses(run)[-1][0]
    last = latest(run)
    assert last is not None and int(last.name[5:]) == stopped < 40 and not (run / "final").exists()
    res = _run(cmd + ["--resume"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert [s for s, _ in _losses(run)] == list(range(1, 41)) and (run / "final").is_dir()
