"""`slm profile --target-ci --time-cap --max-reps --ops`: parsed into ProfileArgs/BenchArgs, validated with one-line
errors, and passed on to a remote run unchanged."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from slm.profiling.api import ProfileArgs, RemoteArgs, remote_argv
from slm.profiling.protocol import BenchArgs

from slm.cli import main
from slm.cli.profile import register


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    return p.parse_args(["profile", *argv])


def _profile_args(ns: argparse.Namespace) -> ProfileArgs:
    return ProfileArgs(backends=ns.backends, threads=ns.threads, quick=ns.quick, ops=ns.ops,
                       bench=BenchArgs(pp=ns.pp, tg=ns.tg, depths=ns.depths, reps=ns.reps, target_ci=ns.target_ci,
                                       time_cap_s=ns.time_cap, max_reps=ns.max_reps))


def test_flags_reach_the_protocol_and_the_remote_unchanged():
    ns = _parse(["m.gguf", "--target-ci", "0.05", "--time-cap", "7.5", "--max-reps", "12", "--ops", "--threads", "2"])
    a = _profile_args(ns)
    assert (a.bench.target_ci, a.bench.time_cap_s, a.bench.max_reps, a.ops) == (0.05, 7.5, 12, True)
    argv = remote_argv(a, Path("m.gguf"), RemoteArgs("me@jetson", remote_dir="rd"))
    back = _profile_args(_parse(["m.gguf", *argv]))  # what the device parses is what was asked here
    assert back.bench == a.bench and back.ops and back.threads == 2
    q = _profile_args(_parse(["m.gguf", "--quick", "--target-ci", "0.1", "--max-reps", "5"]))
    assert (q.bench.target_ci, q.bench.max_reps, q.bench.time_cap_s, q.ops) == (0.1, 5, 4.0, False)  # quick keeps them
    assert "--ops" not in remote_argv(q, Path("m"), RemoteArgs("h"))


@pytest.mark.parametrize("flags, msg", [(["--target-ci", "0"], "--target-ci must be in"),
                                        (["--target-ci", "1.5"], "--target-ci must be in"),
                                        (["--time-cap", "-1"], "--time-cap > 0"),
                                        (["--max-reps", "2", "--reps", "3"], "--max-reps ≥ --reps")])
def test_bad_values_are_refused_in_one_line(flags, msg, tmp_path, capsys):
    rc = main(["profile", "--config", str(tmp_path / "none.json"), "-o", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert rc != 0 and msg in err and len(err.strip().splitlines()) == 1, err
