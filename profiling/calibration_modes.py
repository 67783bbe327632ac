"""What a power mode changes in the device model, fitted on the published points taken at a non-MAXN mode.

A mode (slm.profiling.devices.POWER_MODES, NVIDIA's nvpmodel files) caps the memory clock, the GPU clock and
the TPCs powered on. The decode model of slm.profiling.calibration becomes

    seconds per token = bytes / (efficiency × bandwidth × b × c^α) + overhead
    prefill tok/s     = (the calibrated MAXN prefill) × c^β

with b = the mode's memory clock / the top mode's (bandwidth scales with it) and c = its TPCs × GPU clock /
the top mode's. α says how much a slower, smaller GPU keeps the memory stream from its bandwidth; β how much
of prefill's compute the clocks take away (β = 1 would be a purely compute-bound prompt). The overhead per
token is left unchanged: no published point separates it.

Fitted (one published pair each, the only absolute non-MAXN figures found): α on llama-bench tg128 of
DeepSeek-R1-Distill-Qwen-32B Q4_K_M on an AGX Orin 64GB, 6.84 tok/s at MAXN and 5.37 at 30 W (b = 1, c = 4/8 ×
612/1300); β on the same table's pp512, 201.73 and 128.64 tok/s (calibration_table's junwei points).

Held out: smolhub's Orin Nano Super sweep of eight 0.1–1.2B models with llama.cpp CUDA, whose 25 W mode gives
"36–47 % more output tok/s than 15W" (ctx 2048, gen 256; the text gives the range, not the rows): the
model's 25 W / 15 W ratio for the SmolLM2-135M point of that source is compared with the range (0 inside
it). A mode of a device with no published point at it is projected by these terms and labelled "no published
point".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slm.profiling.calibration_table import POINTS, PREFILL_POINTS
from slm.profiling.devices import get_device, get_mode, power_modes

SMOLHUB_RANGE = (1.36, 1.47)  # 25 W / 15 W output tok/s on the Orin Nano Super, smolhub (see docstring)
SMOLHUB = "https://www.smolhub.com/posts/jetson-nano-super-benchmark-non-reasoning/"
# (device, mode) pairs a published point was taken at, besides the registry's top modes
PUBLISHED = {("jetson-agx-orin-64gb", "30W"): "junwei-qwen-32b-tg128-30w, junwei-qwen-32b-pp512-30w",
             ("jetson-orin-nano-8gb-super", "25W"): "smolhub and Ollama points (fitted at the registry's "
                                                     "figures) and smolhub's 25 W / 15 W range",
             ("jetson-orin-nano-8gb-super", "15W"): "smolhub's 25 W / 15 W range (held out)"}


@dataclass(frozen=True)
class ModeFit:
    alpha: float  # decode: exponent of the compute ratio on the achieved bandwidth
    beta: float  # prefill: exponent of the compute ratio on the prompt speed
    fitted: dict  # what each exponent was fitted on
    held_out: dict  # check → relative error (0 inside a published range)

    @property
    def held_out_error(self) -> float:
        return max(abs(v) for v in self.held_out.values())

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "fitted": dict(self.fitted),
                "held_out": dict(self.held_out), "held_out_error": self.held_out_error}


def _point(key: str, points=POINTS):
    return next(p for p in points if p.key == key)


def fit_modes(fit) -> ModeFit:
    """The mode terms on top of `fit`, the llama.cpp MAXN decode fit (slm.profiling.calibration.mode_fit
    caches this)."""
    top_m, low_m = (get_mode("jetson-agx-orin-64gb", n) for n in ("MAXN", "30W"))
    c, b = low_m.compute_ratio(top_m), low_m.bandwidth_ratio(top_m)
    hi, lo = _point("junwei-qwen-32b-tg128"), _point("junwei-qwen-32b-tg128-30w")
    x = hi.bytes_per_token / (fit.efficiency * get_device(hi.device).bandwidth_GBps * 1e9)
    o = fit.overhead_s["llama.cpp CUDA"]
    r = hi.decode_tok_s / lo.decode_tok_s  # measured slow-down, t(30 W) / t(MAXN)
    alpha = math.log(x / (b * (r * (x + o) - o))) / math.log(c)
    php, plo = (_point(k, PREFILL_POINTS) for k in ("junwei-qwen-32b-pp512", "junwei-qwen-32b-pp512-30w"))
    beta = math.log(plo.prefill_tok_s / php.prefill_tok_s) / math.log(c)
    partial = ModeFit(alpha, beta, {"alpha": f"{hi.key} / {lo.key}", "beta": f"{php.key} / {plo.key}"}, {})
    # held out: the 25 W / 15 W ratio of the smolhub SmolLM2-135M point on the Nano Super
    sm = _point("smolhub-smollm2-135m")
    dev = get_device(sm.device)

    def tok_s(mode: str) -> float:
        t = terms(dev.key, mode, partial)
        bw = dev.bandwidth_GBps * 1e9 * t["decode_scale"]
        return 1.0 / (sm.bytes_per_token / (fit.efficiency * bw) + o)

    ratio = tok_s("25W") / tok_s("15W")
    lo_r, hi_r = SMOLHUB_RANGE
    err = ratio / lo_r - 1 if ratio < lo_r else ratio / hi_r - 1 if ratio > hi_r else 0.0
    return ModeFit(alpha, beta, partial.fitted, {f"smolhub 25W/15W ({ratio:.2f} vs {lo_r}–{hi_r})": err})


def terms(device_key: str, mode: str | None, fit: ModeFit) -> dict:
    """The scales a mode applies to the MAXN projection, and its label."""
    m = get_mode(device_key, mode)
    modes = power_modes(device_key)
    if m is None or m is modes[0]:
        name = m.name if m else "MAXN"
        return {"mode": name, "decode_scale": 1.0, "prefill_scale": 1.0, "label": f"{name} (the registry's "
                "figures)", "published": True}
    f = fit
    c, b = m.compute_ratio(modes[0]), m.bandwidth_ratio(modes[0])
    published = PUBLISHED.get((device_key, m.name))
    label = (f"{m.name} (nvpmodel -m {m.mode_id}: GPU {m.gpu_mhz:g} MHz × {m.tpcs} TPCs, memory clock "
             f"{m.emc_mhz:g} MHz; bandwidth × {b:.2f}, GPU throughput × {c:.2f}); "
             + (f"published points: {published}" if published else "no published point at this mode: the "
                "mode terms fitted on AGX Orin 30 W are extrapolated"))
    return {"mode": m.name, "decode_scale": b * c ** f.alpha, "prefill_scale": c ** f.beta, "label": label,
            "published": bool(published), "bandwidth_ratio": b, "compute_ratio": c}


def mode_how(f: ModeFit) -> str:
    return (f"power mode terms: achieved bandwidth × (bandwidth ratio) × c^{f.alpha:.2f}, prefill × "
            f"c^{f.beta:.2f} (c = TPCs × GPU clock vs MAXN), fitted on AGX Orin 64GB 30 W llama-bench "
            f"points; held-out error ±{f.held_out_error:.0%} ({'; '.join(f.held_out)}, {SMOLHUB})")
