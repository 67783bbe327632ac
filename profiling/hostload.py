"""What else the machine was doing while a test ran: other processes' CPU time, CPU frequency, and on a Jetson
the power mode, clocks and temperatures. A figure measured beside a busy neighbour is flagged, never trusted.

Other processes' CPU time = the machine's busy time in /proc/stat (user + nice + system + irq + softirq +
steal, in USER_HZ ticks; proc(5)) minus this process's own user + system time (os.times(), every thread of it
— llama.cpp and torch run their threads in this process), as a share of the machine's capacity (wall time ×
CPUs).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Above this share of the machine's CPU capacity taken by other processes a test is flagged as disturbed. One
# busy neighbour thread takes up to 1/N of an N-core machine (50 % here on 2 cores, 12.5 % on an 8-core Orin
# NX) and cost decode 3× in a measured sweep; an idle Linux box's daemons and kernel threads stay near 1–3 %,
# and the tick resolution (100 Hz) adds ±2 ticks, i.e. ±1 % of a 1-second test on 2 CPUs. 10 % sits clear of
# both.
DISTURBED_SHARE = 0.10
# Shortest window the share is taken over: /proc/stat counts 100 Hz ticks, so ±2 ticks are ±1/(50·w·CPUs) of
# the capacity — 2 % at 0.5 s on 2 CPUs. Tests that finish sooner (a tiny model's millisecond runs) are padded
# with an idle wait, so their share describes the test's neighbourhood rather than tick rounding.
MIN_WINDOW_S = 0.5
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# user nice system irq softirq steal (iowait and idle are not busy; guest is in user)
_BUSY = (0, 1, 2, 5, 6, 7)


def _proc_stat() -> tuple[float, int] | None:
    """(busy seconds of all CPUs, CPU count) from /proc/stat; None where it is not readable (not Linux)."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    vals = [int(x) for x in lines[0].split()[1:]]
    ncpu = sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())
    return sum(vals[i] for i in _BUSY if i < len(vals)) / _TICK, max(ncpu, 1)


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def cpu_mhz() -> float | None:
    """Mean current frequency of the CPUs in MHz (cpufreq sysfs); None where the kernel does not expose it."""
    vals = []
    for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"):
        try:
            vals.append(int(Path(p).read_text()) / 1e3)
        except (OSError, ValueError):
            pass
    return round(sum(vals) / len(vals), 1) if vals else None


def on_jetson() -> bool:
    return Path("/etc/nv_tegra_release").is_file()


def jetson_power_mode() -> str | None:
    """`nvpmodel -q`'s first line (e.g. 'NV Power Mode: MAXN'); None off a Jetson or without the tool."""
    exe = shutil.which("nvpmodel")
    if not (on_jetson() and exe):
        return None
    try:
        out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((ln.strip() for ln in out.splitlines() if ln.strip()), None)


def jetson_sensors() -> dict:
    """Temperatures (°C, per thermal zone) and devfreq clocks (MHz: GPU, EMC…) on a Jetson; {} elsewhere."""
    if not on_jetson():
        return {}
    out: dict = {"temp_c": {}, "clock_mhz": {}}
    for z in glob.glob("/sys/class/thermal/thermal_zone*"):
        try:
            out["temp_c"][Path(z, "type").read_text().strip()] = int(Path(z, "temp").read_text()) / 1e3
        except (OSError, ValueError):
            pass
    for d in glob.glob("/sys/class/devfreq/*"):
        try:
            out["clock_mhz"][Path(d).name] = int(Path(d, "cur_freq").read_text()) / 1e6
        except (OSError, ValueError):
            pass
    return out


@dataclass
class Load:
    """What the machine did during one test."""

    wall_s: float  # seconds the window lasted
    other_cpu_s: float | None  # CPU seconds used by other processes (None: /proc/stat not readable)
    other_cpu_share: float | None  # other_cpu_s / (wall_s × CPUs), clamped to [0, 1]
    cpus: int  # CPUs the share is taken over
    cpu_mhz: float | None = None  # mean CPU frequency at the end of the window
    jetson: dict = field(default_factory=dict)  # temperatures and clocks on a Jetson

    @property
    def disturbed(self) -> bool:
        return self.other_cpu_share is not None and self.other_cpu_share > DISTURBED_SHARE


class Window:
    """`w = Window(); ...; load = w.stop()`: the machine's load between the two calls."""

    def __init__(self):
        self.t0, self.own0, self.stat0 = time.perf_counter(), _own_cpu(), _proc_stat()

    def stop(self) -> Load:
        time.sleep(max(0.0, MIN_WINDOW_S - (time.perf_counter() - self.t0)))
        wall, own, stat = time.perf_counter() - self.t0, _own_cpu() - self.own0, _proc_stat()
        other = share = None
        ncpu = stat[1] if stat else (os.cpu_count() or 1)
        if stat and self.stat0 and wall > 0:
            other = max(0.0, (stat[0] - self.stat0[0]) - own)
            share = min(1.0, other / (wall * ncpu))
        return Load(wall, other, share, ncpu, cpu_mhz(), jetson_sensors())
