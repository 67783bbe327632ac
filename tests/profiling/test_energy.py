"""Energy readers against fake sysfs trees laid out as on a Jetson (INA3221 hwmon, JetPack 5/6) and an x86
host (RAPL powercap), and the protocol's per-test energy fields."""

from __future__ import annotations

import time

import pytest

from slm.profiling import energy
from slm.profiling.protocol import BenchArgs, run_tests


def _ina(root, dev="1-0040", channels=(("VDD_IN", 5000, 1000), ("VDD_CPU_GPU_CV", 5000, 400), ("NC", 0, 0))):
    """An Orin-style INA3221 at /sys/bus/i2c/devices/<dev>/hwmon/hwmon3 (jtop's layout), plus channel 7."""
    d = root / "bus/i2c/devices" / dev
    hw = d / "hwmon/hwmon3"
    hw.mkdir(parents=True)
    (d / "name").write_text("ina3221\n")
    for i, (label, mv, ma) in enumerate([*channels, ("sum of shunt voltages", 1, 1)], start=1):
        n = 7 if label.startswith("sum") else i
        (hw / f"in{n}_label").write_text(label + "\n")
        (hw / f"in{n}_input").write_text(f"{mv}\n")
        (hw / f"curr{n}_input").write_text(f"{ma}\n")
    return hw


def test_ina3221_rails_skip_nc_and_the_shunt_sum(tmp_path, monkeypatch):
    _ina(tmp_path)
    monkeypatch.setattr(energy, "SYSFS", str(tmp_path))
    rails = energy.ina3221_rails()
    assert sorted(rails) == ["VDD_CPU_GPU_CV", "VDD_IN"]
    assert energy._watts(rails) == {"VDD_IN": 5.0, "VDD_CPU_GPU_CV": 2.0}  # mV × mA / 1e6


def test_ina3221_meter_integrates_power_over_the_window(tmp_path, monkeypatch):
    hw = _ina(tmp_path)
    monkeypatch.setattr(energy, "SYSFS", str(tmp_path))
    m = energy.Meter(period_s=0.01).start()
    time.sleep(0.2)
    (hw / "curr1_input").write_text("2000\n")  # VDD_IN steps from 5 W to 10 W half-way
    time.sleep(0.2)
    e = m.stop()
    assert e.rails == ["VDD_IN"] and "INA3221" in e.how and e.samples > 10
    assert e.joules == pytest.approx(5 * 0.2 + 10 * 0.2, rel=0.15)  # 3 J, the total rail only
    assert e.per_rail_j["VDD_CPU_GPU_CV"] == pytest.approx(2.0 * e.seconds, rel=0.1)
    f = energy.per_token(e, timed_s=0.3, tokens=30)
    assert (f["j_per_token"] == pytest.approx(e.watts * 0.3 / 30)
            and f["tok_per_j"] == pytest.approx(1 / f["j_per_token"]))


def test_without_a_total_rail_the_rails_are_summed(tmp_path, monkeypatch):
    _ina(tmp_path, channels=(("VDD_GPU_SOC", 5000, 1000), ("VDD_CPU_CV", 5000, 200)))
    monkeypatch.setattr(energy, "SYSFS", str(tmp_path))
    e = energy.Meter(period_s=0.01).start()
    time.sleep(0.1)
    e = e.stop()
    assert e.rails == ["VDD_CPU_CV", "VDD_GPU_SOC"] and e.watts == pytest.approx(6.0, rel=0.05)


def _rapl(root, uj=1_000_000, rng=10_000_000, readable=True):
    z = root / "class/powercap/intel-rapl:0"
    sub = root / "class/powercap/intel-rapl:0:0"
    for d, name in ((z, "package-0"), (sub, "core")):
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "max_energy_range_uj").write_text(f"{rng}\n")
        (d / "energy_uj").write_text(f"{uj}\n")
        if not readable:
            (d / "energy_uj").chmod(0)
    return z


def test_rapl_counts_packages_only_and_corrects_wraparound(tmp_path, monkeypatch):
    z = _rapl(tmp_path, uj=9_500_000)
    monkeypatch.setattr(energy, "SYSFS", str(tmp_path))
    # the core sub-zone is inside the package
    assert list(energy.rapl_zones()) == ["package-0 (intel-rapl:0)"]
    assert energy.rapl_delta(9_500_000, 500_000, 10_000_000) == 1_000_000
    m = energy.Meter().start()
    (z / "energy_uj").write_text("500000\n")  # wrapped: 0.5 J to the top, 0.5 J after it
    e = m.stop()
    assert e.joules == pytest.approx(1.0) and e.rails == ["package-0 (intel-rapl:0)"] and "RAPL" in e.how


def test_nothing_measurable_gives_none_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "SYSFS", str(tmp_path))
    assert energy.Meter().start().stop() is None
    f = energy.per_token(None, 1.0, 10)
    assert f["energy_j"] is None and f["j_per_token"] is None and f["rails"] == []
    assert f["energy_how"].startswith("not measurable here") and "no RAPL counters" in f["energy_how"]


class Steady:
    name = "steady"

    def prefill(self, n, depth=0):
        time.sleep(0.01)
        return 0.01

    decode = prefill


def test_protocol_rows_carry_energy_from_the_rails(tmp_path, monkeypatch):
    _ina(tmp_path)
    monkeypatch.setattr(energy, "SYSFS", str(tmp_path))
    rows = run_tests(Steady(), BenchArgs(pp=(100,), tg=10, depths=(0,), reps=3, warmup=0))
    for r in rows:
        # 5 W on VDD_IN, 10 ms per run of n tokens: 0.05 J per run
        assert r["rails"] == ["VDD_IN"] and r["j_per_token"] == pytest.approx(0.05 / r["n_tokens"], rel=0.1)
        assert r["energy_j"] == pytest.approx(0.05 * r["reps"], rel=0.1) and r["tok_per_j"] > 0
    monkeypatch.setattr(energy, "SYSFS", str(tmp_path / "none"))
    [r] = run_tests(Steady(), BenchArgs(pp=(100,), tg=0, reps=2, warmup=0))
    assert r["j_per_token"] is None and "not measurable here" in r["energy_how"]
