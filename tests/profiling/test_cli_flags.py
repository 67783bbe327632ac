"""`slm profile` flags: parsed by the CLI's own mapping into ProfileArgs/BenchArgs (one place holds each
default), validated with one-line errors, and sent to a remote run as the ProfileArgs record itself."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from slm.cli import main
from slm.cli.profile import profile_args, register
from slm.profiling.api import ProfileArgs, RemoteArgs, remote_argv
from slm.profiling.protocol import BenchArgs


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    return p.parse_args(["profile", *argv])


def _on_device(a: ProfileArgs) -> ProfileArgs:
    """What the device parses from the command line the remote run is given."""
    return profile_args(_parse(["m.gguf", *remote_argv(a, Path("m.gguf"), RemoteArgs("me@jetson"))]))


def test_no_flag_means_the_dataclass_defaults():
    assert profile_args(_parse(["m.gguf"])) == ProfileArgs()


def test_flags_reach_the_protocol():
    a = profile_args(_parse(["m.gguf", "--target-ci", "0.05", "--time-cap", "7.5", "--max-reps", "12",
                             "--ops", "--threads", "2", "--full-all"]))
    assert (a.bench.target_ci, a.bench.time_cap_s, a.bench.max_reps, a.ops,
            a.full_all) == (0.05, 7.5, 12, True, True)
    q = profile_args(_parse(["m.gguf", "--quick", "--time-cap", "7.5"]))
    assert q.bench.time_cap_s == 7.5 and q.bench.pp == (64, 256)  # the user's cap wins over quick's 4 s


def test_every_field_round_trips_to_the_device():
    """A ProfileArgs with every field away from its default arrives on the device equal, field by field."""
    a = ProfileArgs(device="jetson-orin-nano-8gb", quant="q8_0,q4_k_m", backends="llama.cpp,torch",
                    bench=BenchArgs(pp=(32, 64), tg=16, depths=(0, 8), reps=4, warmup=2, target_ci=0.07,
                                    time_cap_s=3.5, max_reps=9, threads=1, seed=5),
                    threads=1, quick=False, sweep_pp=64, sweep_tg=8, sweep_reps=3, ppl_chunks=2,
                    kv_types=("f16", "q8_0"), kv_contexts=(256, 1024), refresh_host=True, full_all=True,
                    ops=True, kv_quality_ctx=1024, kv_quality_chunks=1, engine="mlc", power_mode="7W")
    defaults = ProfileArgs()
    same = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) == getattr(defaults, f.name)]
    assert same == ["quick"], f"test must move every field off its default: {same}"  # quick: below
    assert _on_device(a) == a
    quick = profile_args(_parse(["m.gguf", "--quick", "--time-cap", "7.5", "--full-all"]))
    back = _on_device(quick)
    assert back == quick and back.quick and back.full_all and back.bench.time_cap_s == 7.5
    assert ProfileArgs.from_dict(json.loads(json.dumps(quick.to_dict()))) == quick


def test_a_record_from_another_version_is_refused(capsys):
    bad = json.dumps({**ProfileArgs().to_dict(), "new_option": 1})
    with pytest.raises(Exception, match="unknown profile arguments"):
        profile_args(_parse(["m.gguf", "--args-json", bad]))


@pytest.mark.parametrize("flags, msg", [(["--target-ci", "0"], "--target-ci must be in"),
                                        (["--target-ci", "1.5"], "--target-ci must be in"),
                                        (["--time-cap", "-1"], "--time-cap > 0"),
                                        (["--max-reps", "2", "--reps", "3"], "--max-reps ≥ --reps")])
def test_bad_values_are_refused_in_one_line(flags, msg, tmp_path, capsys):
    rc = main(["profile", "--config", str(tmp_path / "none.json"), "-o", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert rc != 0 and msg in err and len(err.strip().splitlines()) == 1, err
