"""Energy over a test window, where the machine can measure it — never invented.

Two sources, read from sysfs (the root is a module attribute so tests point it at a fake tree):

- Jetson (JetPack 5/6): the INA3221 power monitors under the hwmon driver. jetson-stats' `jtop/core/power.py`
  (find_all_i2c_power_monitor, list_all_i2c_ports) finds them as /sys/bus/i2c/devices/<dev>/name containing
  "ina3221", then <dev>/hwmon/hwmon*/ with, per channel N, `inN_label` (rail name, e.g. VDD_IN,
  VDD_CPU_GPU_CV, VDD_SOC), `inN_input` (bus voltage, mV) and `currN_input` (current, mA); labels containing
  "NC" are unconnected channels and channel 7 is the chip's "sum of shunt voltages" (both skipped, as jtop
  does). NVIDIA's Jetson Linux developer guide (Platform Power and Performance, "Jetson Orin … power
  monitoring") documents the same rails. Power is sampled in a background thread every `period_s` and
  integrated (trapezoids) over the window. VDD_IN (Orin) / POM_5V_IN (Xavier, Nano) is the module's input rail
  and stands for the total when present (jtop's total_power); otherwise the rails are summed.
- x86 host: RAPL package counters /sys/class/powercap/intel-rapl:N/energy_uj (µJ, monotonic, wrapping at
  max_energy_range_uj; Linux powercap docs). Only top-level packages are read (intel-rapl:N:M sub-zones such
  as core/uncore/dram are inside their package, summing them would count twice). Since 2020 (CVE-2020-8694)
  energy_uj is root-only on most distributions: unreadable means "not measurable here".

The protocol (slm.profiling.protocol) starts a `Meter` around each test's timed repetitions; energy per token
is the window's mean power × the timed seconds ÷ the tokens timed, so untimed setup inside the window (cache
restores) is not charged to the tokens.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SYSFS = "/sys"  # root of the sysfs tree (tests monkeypatch it to a fake tree under tmp_path)
# INA3221 sampling period (jtop's default interval is 1 s; the chip averages over ~1 ms conversions)
PERIOD_S = 0.05
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # module input rails (jtop total_power)
NOT_MEASURABLE = "not measurable here"


@dataclass
class Energy:
    """Energy measured over one window."""

    joules: float  # energy of the counted rails over the window (J)
    seconds: float  # window length (s)
    rails: list = field(default_factory=list)  # rail / counter names the joules are the sum of
    how: str = ""  # source and method, e.g. "INA3221 VDD_IN sampled every 50 ms, trapezoids"
    samples: int = 0  # power samples (INA3221) or counter reads (RAPL)
    per_rail_j: dict = field(default_factory=dict)  # every rail's energy, counted or not (J)

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "watts": self.watts}


def _read_int(p: str | Path) -> int | None:
    try:
        return int(Path(p).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# ---- Jetson INA3221 ----------------------------------------------------------------------------------------
def ina3221_rails(root: str | None = None) -> dict[str, tuple[str, str]]:
    """rail name → (voltage file in mV, current file in mA) of every connected INA3221 channel (jtop's
    layout)."""
    root = root or SYSFS
    out: dict[str, tuple[str, str]] = {}
    devs = set(glob.glob(f"{root}/bus/i2c/devices/*")) | set(glob.glob(f"{root}/bus/i2c/drivers/ina3221/*"))
    for dev in sorted(devs):
        name = Path(dev, "name")
        if not (name.is_file() and "ina3221" in name.read_text()):
            continue
        for hw in sorted(glob.glob(f"{dev}/hwmon/hwmon*")):
            for label in sorted(glob.glob(f"{hw}/in*_label")):
                n = Path(label).name[2:].split("_")[0]
                rail = Path(label).read_text().strip()
                if not n.isdigit() or n == "7" or "NC" in rail:  # 7: sum of shunt voltages; NC: unconnected
                    continue
                volt, curr = f"{hw}/in{n}_input", f"{hw}/curr{n}_input"
                if _read_int(volt) is not None and _read_int(curr) is not None:
                    out[rail] = (volt, curr)
    return out


def _watts(rails: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Each rail's power now (W) = mV × mA / 1e6."""
    out = {}
    for rail, (v, c) in rails.items():
        mv, ma = _read_int(v), _read_int(c)
        if mv is not None and ma is not None:
            out[rail] = mv * ma / 1e6
    return out


# ---- RAPL --------------------------------------------------------------------------------------------------
def rapl_zones(root: str | None = None) -> dict[str, tuple[str, int]]:
    """package name → (energy_uj file, wrap range in µJ) of every readable top-level RAPL zone."""
    root = root or SYSFS
    out = {}
    for z in sorted(glob.glob(f"{root}/class/powercap/intel-rapl:*")):
        if Path(z).name.count(":") != 1:  # intel-rapl:N:M is inside package N
            continue
        e, rng = f"{z}/energy_uj", _read_int(f"{z}/max_energy_range_uj")
        if _read_int(e) is None or not rng:
            continue
        try:
            name = Path(z, "name").read_text().strip()
        except OSError:
            name = Path(z).name
        out[f"{name} ({Path(z).name})"] = (e, rng)
    return out


def rapl_delta(before: int, after: int, wrap: int) -> int:
    """µJ between two reads of a counter that wraps to 0 after `wrap` (one wrap at most between reads)."""
    return after - before if after >= before else after + wrap - before


# ---- the meter ---------------------------------------------------------------------------------------------
class Meter:
    """`m = Meter(); m.start(); …; e = m.stop()`: energy over the window, or None where nothing is measurable.

    One background thread samples INA3221 power (integrated by trapezoids) or reads RAPL counters (deltas
    summed per read, so a counter that wraps more than once in a long window is still counted right)."""

    def __init__(self, period_s: float = PERIOD_S, root: str | None = None):
        self.period_s = period_s
        self.rails = ina3221_rails(root)
        self.zones = {} if self.rails else rapl_zones(root)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return bool(self.rails or self.zones)

    def _sample(self) -> None:
        t, w = time.perf_counter(), _watts(self.rails) if self.rails else {}
        if self.rails:
            for k, p in w.items():
                if k in self._last_w:
                    self._j[k] += (p + self._last_w[k]) / 2 * (t - self._last_t)
            self._last_w = w
        else:
            for k, (f, wrap) in self.zones.items():
                v = _read_int(f)
                if v is not None and self._last_c.get(k) is not None:
                    self._j[k] += rapl_delta(self._last_c[k], v, wrap) / 1e6
                self._last_c[k] = v
        self._last_t, self._n = t, self._n + 1

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s if self.rails else 1.0):
            self._sample()

    def start(self) -> Meter:
        self._j = dict.fromkeys(self.rails or self.zones, 0.0)
        self._last_w, self._last_c, self._n, self._t0 = {}, {}, 0, time.perf_counter()
        if self.available:
            self._sample()
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="slm-energy", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> Energy | None:
        if not self.available:
            return None
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample()
        total = [r for r in TOTAL_RAILS if r in self._j][:1] or sorted(self._j)
        how = (f"INA3221 rail{'s' if len(total) > 1 else ''} {', '.join(total)} sampled every "
               f"{self.period_s * 1e3:.0f} ms, integrated by trapezoids" if self.rails else
               f"RAPL energy counter{'s' if len(total) > 1 else ''} {', '.join(total)} "
               "(energy_uj, wrap-corrected)")
        return Energy(sum(self._j[r] for r in total), time.perf_counter() - self._t0, total, how, self._n,
                      {k: round(v, 6) for k, v in self._j.items()})


def why_not(root: str | None = None) -> str:
    """Why no energy is shown: the sources looked for."""
    root = root or SYSFS
    rapl = glob.glob(f"{root}/class/powercap/intel-rapl:*")
    return (f"{NOT_MEASURABLE}: no INA3221 power rails (Jetson) and "
            + ("RAPL counters present but not readable (root-only since CVE-2020-8694)" if rapl
               else "no RAPL counters (/sys/class/powercap)")
            + (" " if os.name == "posix" else " (not Linux)")).strip()


def per_token(e: Energy | None, timed_s: float, tokens: int) -> dict:
    """The row fields: energy of the timed runs (mean window power × timed seconds), J per token, tokens per
    J."""
    if e is None or tokens <= 0 or e.seconds <= 0:
        return {"energy_j": None, "j_per_token": None, "tok_per_j": None, "power_w": None, "rails": [],
                "energy_how": why_not()}
    j = e.watts * timed_s
    return {"energy_j": j, "j_per_token": j / tokens, "tok_per_j": tokens / j if j > 0 else None,
            "power_w": e.watts, "rails": e.rails,
            "energy_how": e.how + "; J per token = mean window power × timed seconds ÷ tokens timed",
            "energy_rails_j": e.per_rail_j}
