"""Jetson devices: the registry (each figure with its source), on-device detection, and the
projection of a model onto a device.

Projection (labelled "projected" wherever shown): decode comes from the calibrated device model in
slm.profiling.calibration — fitted to published Jetson Orin measurements (slm.profiling.calibration_table),
with its held-out error stated on every projected figure. It never depends on what this host measured: a
host's own efficiency is shown beside it as a host figure, not used to scale the device (a CPU's efficiency
says nothing of llama.cpp's CUDA kernels on an Orin GPU). On a Jetson the profile measures instead of
projecting. Prefill is projected against the GPU's dense FP16 throughput, taken as the GPU's sparse INT8 TOPS
/ 4 (sparsity ×2, INT8 vs FP16 ×2; Thor's figure is FP4 sparse TFLOPS, so / 8), times an efficiency fitted to
published llama-bench pp512 figures (slm.profiling.calibration). Only the GPU counts: the datasheet's "AI
performance" of the AGX and NX modules adds their DLAs, which llama.cpp does not use (AGX Orin 64GB: 275 = 170
GPU + 105 DLA, NVIDIA's Jetson AGX Orin technical brief). The GPU share of the other modules is their tensor
cores × maximum GPU clock at the AGX Orin 64GB's rate (170 TOPS / (64 tensor cores × 1.3 GHz)); it reproduces
the Orin Nano's 40 and the Nano Super's 67, which have no DLA.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from slm.errors import SlmError

GIB = 1024**3
# memory JetPack's OS, desktop-less, keeps for itself (assumption; unified CPU/GPU memory)
OS_RESERVE_GIB = 2.0
_ORIN = ("https://www.nvidia.com/en-us/autonomous-machines/embedded-systems/jetson-orin/ "
         "(Jetson Orin technical specifications table)")
_NANO_SUPER = "https://developer.nvidia.com/blog/nvidia-jetson-orin-nano-developer-kit-gets-a-super-boost/"
_THOR = ("https://www.nvidia.com/en-us/autonomous-machines/embedded-systems/jetson-thor/ "
         "(Jetson T5000 module specifications)")


@dataclass(frozen=True)
class Device:
    key: str  # registry name used by --device
    name: str  # marketing name
    memory_gib: float  # unified LPDDR memory (CPU and GPU share it)
    bandwidth_GBps: float  # peak memory bandwidth, GB/s (10⁹ bytes)
    ai_tops: float  # datasheet "AI performance" figure
    ai_tops_kind: str  # what that figure counts
    cpu: str  # CPU cores
    source: str  # where the figures come from
    # the GPU's share of ai_tops (without DLAs); 0: all of it (see the module docstring)
    gpu_tops: float = 0.0

    @property
    def fp16_tflops(self) -> float:
        """The GPU's dense FP16 throughput derived from its datasheet AI figure (see module docstring)."""
        return (self.gpu_tops or self.ai_tops) / (8 if "FP4" in self.ai_tops_kind else 4)

    @property
    def usable_bytes(self) -> float:
        return (self.memory_gib - OS_RESERVE_GIB) * GIB

    def to_dict(self) -> dict:
        return {**asdict(self), "gpu_fp16_tflops": self.fp16_tflops, "usable_bytes": self.usable_bytes}


INT8 = "INT8 sparse TOPS"
DEVICES = {d.key: d for d in [
    Device("jetson-orin-nano-8gb", "Jetson Orin Nano 8GB", 8, 68, 40, INT8, "6× Cortex-A78AE", _ORIN),
    Device("jetson-orin-nano-8gb-super", "Jetson Orin Nano 8GB (Super mode)", 8, 102, 67, INT8,
           "6× Cortex-A78AE", _NANO_SUPER),
    # GPU shares: 32 tensor cores at 765 / 918 MHz (NX 8/16GB), 56 at 930 MHz (AGX 32GB), 64 at 1.3 GHz (AGX
    # 64GB)
    Device("jetson-orin-nx-8gb", "Jetson Orin NX 8GB", 8, 102.4, 70, INT8, "6× Cortex-A78AE", _ORIN, 50),
    Device("jetson-orin-nx-16gb", "Jetson Orin NX 16GB", 16, 102.4, 100, INT8, "8× Cortex-A78AE", _ORIN, 60),
    Device("jetson-agx-orin-32gb", "Jetson AGX Orin 32GB", 32, 204.8, 200, INT8, "8× Cortex-A78AE",
           _ORIN, 106),
    Device("jetson-agx-orin-64gb", "Jetson AGX Orin 64GB", 64, 204.8, 275, INT8, "12× Cortex-A78AE",
           _ORIN, 170),
    Device("jetson-agx-thor", "Jetson AGX Thor (T5000)", 128, 273, 2070, "FP4 sparse TFLOPS",
           "14× Neoverse-V3AE", _THOR),
]}
ALIASES = {"jetson": "jetson-orin-nx-16gb",  # the SLM survey's device
           "orin-nx": "jetson-orin-nx-16gb", "orin-nano": "jetson-orin-nano-8gb", "thor": "jetson-agx-thor"}


def get_device(key: str) -> Device:
    k = ALIASES.get(key.lower(), key.lower())
    if k not in DEVICES:
        raise SlmError(f"unknown device {key!r}: known devices are {', '.join(DEVICES)} (and 'jetson' = "
                       "jetson-orin-nx-16gb), or 'host' for this machine")
    return DEVICES[k]


def detect(root: Path | str = "/") -> Device | None:
    """The Jetson this code runs on, from /proc/device-tree/model (and /etc/nv_tegra_release), else None."""
    root = Path(root)
    model_file, tegra = root / "proc/device-tree/model", root / "etc/nv_tegra_release"
    if not model_file.is_file() and not tegra.is_file():
        return None
    model = model_file.read_text(errors="replace").strip("\x00 \n").lower() if model_file.is_file() else ""
    mem_gib = _meminfo_gib(root)
    if "thor" in model:
        return DEVICES["jetson-agx-thor"]
    if "agx orin" in model:
        return DEVICES["jetson-agx-orin-64gb" if mem_gib > 40 else "jetson-agx-orin-32gb"]
    if "orin nx" in model:
        return DEVICES["jetson-orin-nx-16gb" if mem_gib > 10 else "jetson-orin-nx-8gb"]
    if "orin nano" in model:
        return DEVICES["jetson-orin-nano-8gb"]
    return None  # a Tegra we have no figures for: measure as a plain host


def _meminfo_gib(root: Path) -> float:
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", (root / "proc/meminfo").read_text())
        return int(m[1]) * 1024 / GIB if m else 0.0
    except OSError:
        return 0.0


def fits(device: Device, weight_bytes: float, kv_bytes: float, compute_bytes: float = 0.0) -> bool:
    return weight_bytes + kv_bytes + compute_bytes <= device.usable_bytes


# ---- power modes (nvpmodel) --------------------------------------------------------------------------------
# NVIDIA's nvpmodel configuration files as the Jetson Linux BSP ships them (nvpmodel_p3701_0000.conf = AGX
# Orin 64GB, _p3701_0004 = AGX Orin 32GB, _p3767_0000 = Orin NX 16GB, _p3767_0001 = NX 8GB, _p3767_0003 =
# Orin Nano 8GB, _p3767_0003_super = the same module under JetPack 6.2's Super modes), read in the copy at
# https://github.com/LineageOS/android_device_nvidia_concord/tree/lineage-23.0/nvpmodel (its super files at
# commit 370b63a). Each mode caps the GPU clock (GPU MAX_FREQ), the memory controller clock (EMC MAX_FREQ) and
# power-gates TPCs (TPC_PG_MASK: a set bit is a gated TPC). "-1"/"0" there mean the hardware maximum, which is
# the datasheet's (the GPU max frequencies in _ORIN's table, 1020 MHz in _NANO_SUPER; EMC 3199 MHz = LPDDR5
# 6400 MT/s, the registry's bandwidth; the original Orin Nano's 68 GB/s is EMC 2133 MHz).
NVPMODEL = ("NVIDIA nvpmodel_{conf}.conf (Jetson Linux BSP), via https://github.com/LineageOS/"
            "android_device_nvidia_concord/tree/lineage-23.0/nvpmodel")


@dataclass(frozen=True)
class PowerMode:
    name: str  # nvpmodel mode name (`nvpmodel -q` prints it)
    mode_id: int  # nvpmodel -m ID
    gpu_mhz: float  # GPU clock cap
    emc_mhz: float  # memory-controller clock cap (bandwidth scales with it)
    tpcs: int  # GPU TPCs powered on
    source: str  # the nvpmodel file it is read from

    def compute_ratio(self, top: PowerMode) -> float:
        """This mode's GPU throughput as a share of the top mode's: TPCs × clock."""
        return self.tpcs * self.gpu_mhz / (top.tpcs * top.gpu_mhz)

    def bandwidth_ratio(self, top: PowerMode) -> float:
        return self.emc_mhz / top.emc_mhz


def _modes(conf: str, *modes) -> tuple[PowerMode, ...]:
    """Modes listed top (the registry's figures: MAXN) first."""
    return tuple(PowerMode(n, i, g, e, t, NVPMODEL.format(conf=conf)) for n, i, g, e, t in modes)


POWER_MODES = {
    "jetson-agx-orin-64gb": _modes("p3701_0000", ("MAXN", 0, 1300, 3199, 8), ("50W", 3, 816, 3199, 8),
                                   ("30W", 2, 612, 3199, 4), ("15W", 1, 408, 2133, 3)),
    "jetson-agx-orin-32gb": _modes("p3701_0004", ("MAXN", 0, 930, 3199, 7), ("40W", 3, 816, 3199, 7),
                                   ("30W", 2, 612, 3199, 4), ("15W", 1, 408, 2133, 3)),
    "jetson-orin-nx-16gb": _modes("p3767_0000", ("MAXN", 0, 918, 3199, 4), ("25W", 3, 408, 3199, 4),
                                  ("15W", 2, 612, 3199, 2), ("10W", 1, 612, 2133, 2)),
    "jetson-orin-nx-8gb": _modes("p3767_0001", ("MAXN", 0, 765, 3199, 4), ("20W", 3, 408, 3199, 4),
                                 ("15W", 2, 612, 3199, 2), ("10W", 1, 612, 2133, 2)),
    "jetson-orin-nano-8gb": _modes("p3767_0003", ("15W", 0, 625, 2133, 4), ("7W", 1, 408, 2133, 2)),
    "jetson-orin-nano-8gb-super": _modes("p3767_0003_super", ("MAXN_SUPER", 2, 1020, 3199, 4),
                                         ("25W", 1, 918, 3199, 4), ("15W", 0, 612, 2133, 4)),
}


def power_modes(device_key: str) -> tuple[PowerMode, ...]:
    return POWER_MODES.get(device_key, ())


def get_mode(device_key: str, name: str | None) -> PowerMode | None:
    """The named nvpmodel mode of a device (None/"MAXN"/"": its top mode, the registry's figures); a mode the
    device does not have is a one-line error listing its modes."""
    modes = power_modes(device_key)
    if not name or name.upper() in ("MAXN", modes[0].name.upper() if modes else "MAXN"):
        return modes[0] if modes else None
    for m in modes:
        if m.name.upper() == name.upper().replace(" ", ""):
            return m
    have = ", ".join(m.name for m in modes) or "none recorded (its registry figures only)"
    raise SlmError(f"--power-mode {name}: {device_key} has no such nvpmodel mode; its modes are {have} "
                   "(default: the first, MAXN)")
