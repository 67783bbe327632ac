"""`slm profile --host ... --runner llama-bench`: the device's own llama-bench over the local sshd. CI plays
back recorded llama-bench JSON rows from a stub on the remote (tests/profiling/data/llama-bench-smollm2.json:
`llama-bench -o json -r 5 -t 2` of the bundled Q4_1 GGUF, built by `make llama-bench`, on 2 shared cores);
the slow test runs the real llama-bench when one is built (LLAMA_BENCH or the cache)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from slm.cli import main
from slm.profiling.llamabench import parse_fingerprint, parse_tegrastats
from slm.stats import ci95_of

RECORD = Path(__file__).parent / "data" / "llama-bench-smollm2.json"
STUB = '''#!{python}
import json, sys, time
a = sys.argv[1:]
opt = lambda k, d: a[a.index(k) + 1] if k in a else d
with open({log!r}, "a") as f:
    f.write(json.dumps(a) + "\\n")
key = (int(opt("-p", 512)), int(opt("-n", 128)), int(opt("-d", 0)))
row = next((x for x in json.load(open({record!r})) if (x["n_prompt"], x["n_gen"], x["n_depth"]) == key), None)
if row is None:
    sys.exit(f"no recorded row for {{key}}")
time.sleep(0.3)  # a run takes time: tegrastats samples meanwhile
row.update(n_threads=int(opt("-t", 2)), n_gpu_layers=int(opt("-ngl", 99)), model_filename=opt("-m", ""))
print(json.dumps([row], indent=2))
'''
TEGRASTATS = '''#!/bin/sh
while [ $# -gt 0 ]; do [ "$1" = --logfile ] && F=$2; shift; done
while true; do
  echo "12-03-2026 10:00:00 RAM 1936/7620MB CPU [5%@729] VDD_IN 4200mW/4200mW VDD_SOC 900mW/900mW" >> "$F"
  sleep 0.05
done
'''


def _argv(sshd, model, out, *extra):
    d = sshd["dir"]
    return ["profile", str(model), "--host", f"{getpass.getuser()}@127.0.0.1", "--port", str(sshd["port"]),
            "--identity", str(d / "id"), "--known-hosts", str(d / "known_hosts"), "--remote-dir",
            str(out.parent / "remote"), "--runner", "llama-bench", "-o", str(out), *extra]


def _stubs(tmp_path) -> tuple[Path, Path, Path]:
    log = tmp_path / "llama-bench.log"
    lb, tg = tmp_path / "llama-bench", tmp_path / "tegrastats"
    lb.write_text(STUB.format(python=sys.executable, log=str(log), record=str(RECORD)))
    tg.write_text(TEGRASTATS)
    for f in (lb, tg):
        f.chmod(0o755)
    return lb, tg, log


def test_llama_bench_rows_become_the_profile_figures(sshd, gguf, tmp_path):
    lb, tg, log = _stubs(tmp_path)
    out = tmp_path / "profile"
    assert main(_argv(sshd, gguf, out, "--quick", "--llama-bench", str(lb), "--tegrastats", str(tg))) == 0
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(calls) == 4  # pp64, pp256, tg32@d0, tg32@d256: one run each
    cores = os.cpu_count()
    for c in calls:  # the protocol's settings are stated on every run
        assert c[c.index("-o") + 1] == "json" and c[c.index("-r") + 1] == "5"
        assert c[c.index("-t") + 1] == str(cores) and c[c.index("-ngl") + 1] == "999"
        assert c[c.index("-m") + 1] == str(out.parent / "remote" / gguf.name)
    assert [(c[c.index("-p") + 1], c[c.index("-n") + 1], c[c.index("-d") + 1]) for c in calls] == [
        ("64", "0", "0"), ("256", "0", "0"), ("0", "32", "0"), ("0", "32", "256")]

    rec = json.loads((out / "slm.json").read_text())
    figs = {f["name"]: f for f in rec["result"]["figures"]}
    for row in json.loads(RECORD.read_text()):
        test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}@d{row['n_depth']}"
        f = figs[f"llama.cpp.{test}"]
        ts = row["samples_ts"]
        assert f["value"] == pytest.approx(statistics.fmean(ts), abs=1e-3)
        half = ci95_of(ts)
        assert f["interval"] == pytest.approx(half, rel=1e-4)  # Student t over llama-bench's samples
        assert f["how"] == "measured over SSH" and f["n"] == 5
        # energy from tegrastats' VDD_IN (4.2 W) over the run
        energy = figs[f"llama.cpp.{test}.energy"]["value"]
        assert energy == pytest.approx(4.2 / statistics.fmean(ts), rel=1e-3)
    assert figs["device.fingerprint"]["value"].startswith("not a Jetson")
    html = (out / "index.html").read_text()
    assert "device measured on" in html and "not a Jetson (no /etc/nv_tegra_release)" in html
    assert "over llama-bench&#39;s -r 5 repetitions" in html or "over llama-bench's -r 5 repetitions" in html
    res = json.loads((out / "profile.json").read_text())
    assert res["runner"] == "llama-bench" and res["device_fingerprint"]["cores"] == cores


def test_no_llama_bench_on_the_device_is_one_line_and_nothing_is_copied(sshd, gguf, tmp_path, capsys):
    out = tmp_path / "profile"
    rc = main(_argv(sshd, gguf, out, "--quick", "--llama-bench", "/nonexistent/llama-bench"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: no `/nonexistent/llama-bench` on ")
    assert "--llama-bench" in err[-1]
    assert not out.exists() and not (tmp_path / "remote").exists()


def test_a_folder_is_refused_for_llama_bench(sshd, tiny, tmp_path, capsys):
    out = tmp_path / "profile"
    assert main(_argv(sshd, tiny("llama"), out, "--quick")) == 2
    assert "profiles a GGUF file" in capsys.readouterr().err


def test_parse_a_jetson_fingerprint_and_tegrastats():
    text = ("@@l4t\n# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n"
            "@@model\nNVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\n"
            "@@nvpmodel\nNV Power Mode: MAXN_SUPER\n2\n"
            "@@jetson_clocks\nSOC family:tegra234  Machine:NVIDIA Jetson Orin Nano\n"
            "cpu0: Online=1 Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1728000\n"
            "GPU MinFreq=1020000000 MaxFreq=1020000000 CurrentFreq=1020000000\n"
            "@@devfreq\n17000000.gpu 1020000000\n@@emc\n3199000000\n@@kernel\nLinux 5.15.148-tegra aarch64\n"
            "@@cpu\n@@nproc\n6\n")
    fp = parse_fingerprint(text)
    assert fp["jetson"] and fp["l4t"] == "R36.4.3" and fp["power_mode"] == "MAXN_SUPER"
    assert fp["jetson_clocks"] == "on" and fp["gpu_hz"] == 1_020_000_000 and fp["emc_hz"] == 3_199_000_000
    assert fp["cores"] == 6
    off = parse_fingerprint(text.replace("MinFreq=1728000", "MinFreq=729600"))
    assert off["jetson_clocks"] == "off"
    assert parse_fingerprint("@@l4t\n@@nproc\n2\n")["jetson"] is False
    assert parse_tegrastats("RAM 1/2MB VDD_IN 5123mW/5000mW VDD_SOC 1mW/1mW\nPOM_5V_IN 3000mW/1mW\n") == [
        5.123, 3.0]


def _real_llama_bench() -> str | None:
    exe = os.environ.get("LLAMA_BENCH") or str(Path.home() / ".cache/slm-lab/llama-bench/llama-bench")
    return exe if Path(exe).is_file() and os.access(exe, os.X_OK) else shutil.which("llama-bench")


@pytest.mark.slow
def test_real_llama_bench_over_ssh_matches_a_direct_run(sshd, gguf, tmp_path):
    exe = _real_llama_bench()
    if not exe:
        pytest.skip("no llama-bench built: `make llama-bench` builds it (or set LLAMA_BENCH)")
    out = tmp_path / "profile"
    assert main(_argv(sshd, gguf, out, "--llama-bench", exe, "--threads", "2", "--tg", "16", "--pp", "64",
                      "--depths", "0")) == 0
    figs = {f["name"]: f for f in json.loads((out / "slm.json").read_text())["result"]["figures"]}
    direct = json.loads(subprocess.run([exe, "-m", str(gguf), "-o", "json", "-r", "5", "-t", "2", "-p", "64",
                                        "-n", "16", "-d", "0"], capture_output=True, text=True,
                                       check=True).stdout)
    for row in direct:
        test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}@d0"
        f = figs[f"llama.cpp.{test}"]
        half = ci95_of(row["samples_ts"])
        # the same binary through SSH and directly: within both intervals plus the 10 % drift that two runs
        # on a shared machine show (slm/report/lineup.py TIMED_FLOOR)
        slack = f["interval"] + half + 0.10 * row["avg_ts"]
        assert abs(f["value"] - row["avg_ts"]) <= slack, (test, f["value"], row["avg_ts"])
