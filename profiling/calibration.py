"""The device model: decode speed on a Jetson from bytes read per token, fitted to published measurements.

Model (per kernel family, fitted on Jetson Orin points; slm.profiling.calibration_table holds the cited data):

    decode seconds per token = bytes read per token / (efficiency × device bandwidth) + overhead[backend]
    bytes read per token     = weight bytes of the file + KV bytes per token × depth

The overhead is a fixed cost per token (kernel launches, sampling, the server loop); it dominates small models.
Efficiency and overheads are fitted by least squares on the RELATIVE error (each point's predicted time divided
by its measured time, minus one), so a 135M model at 165 tok/s weighs as much as a 70B one at 3 tok/s.

Groups, and why they are pooled: published points are thin, so every Orin module is pooled (one Ampere sm_87
iGPU design; the bandwidth term carries the difference between Orin Nano 68 GB/s, Nano Super 102 GB/s and AGX
Orin 204.8 GB/s), and llama.cpp CUDA is pooled with Ollama, which runs llama.cpp's CUDA kernels behind a server:
one efficiency (the kernels) and one overhead per backend (the host loop around them). MLC is its own group.
Each group's held-out points were chosen in the table (role) before fitting.

Fit (computed from the table by `fit_all`; tests/profiling/test_calibration.py recomputes it and holds these
numbers to ±0.02 / ±1 point, so this text cannot drift from the data):

| group | points fitted / held out | efficiency | overhead ms/token | fit residuals | held-out errors |
|---|---|---|---|---|---|
| llama.cpp (llama.cpp CUDA + Ollama), Orin | 9 / 3 | 0.62 | llama.cpp CUDA 4.0, Ollama 7.1 | −17 % … +71 % (RMS 28 %) | +12.7 % (SmolLM-135M Q2_K, Nano Super), +1.7 % (8B Q4_K_M, AGX), −10.2 % (Llama-3.2-3B Ollama, Nano Super) |
| MLC, Orin | 10 / 3 | 0.86 | 4.9 | −15 % … +69 % (RMS 32 %) | −9.2 % (Llama-3.2-3B), +31.7 % (Gemma-2-2B), −11.0 % (Phi-3.5-mini), all Nano Super |

The largest residuals are Gemma-2 under MLC (predicted 32–69 % too fast: its 256-wide heads and 256k vocabulary
cost more than their bytes) and Qwen2.5-0.5B under Ollama (+71 %: at 0.5B the server's overhead varies more than
one constant captures). The llama.cpp CUDA calibration meets the ±25 % held-out target for 135M–8B (worst
+12.7 %); MLC misses it on Gemma-2-2B (+31.7 %) and meets it on the other two (≤ 11 %).

Prefill is NOT calibrated: no published Orin prefill figure was found for a dense model. A projected prefill is
the datasheet-derived FP16 bound (devices.Device.fp16_tflops) × an assumed 0.3, labelled as such everywhere.

Backends without points (onnxruntime-genai, llama.cpp CPU: one point) and devices without points (AGX Thor) get
the llama.cpp Orin calibration labelled "extrapolated", never a host measurement: a projection depends on the
table and the device registry only, never on ~/.cache/slm/host.json.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from slm.errors import SlmError
from slm.profiling.calibration_table import POINTS, Point

GROUPS = {"llama.cpp": ("llama.cpp CUDA", "Ollama"), "MLC": ("MLC",)}  # kernel family → backends sharing it
PREFILL_ASSUMED = 0.3  # fraction of the datasheet-derived FP16 bound (assumption: no published prefill points)
PREFILL_HOW = (f"not calibrated: {PREFILL_ASSUMED} × the datasheet-derived FP16 bound (sparse INT8 TOPS / 4), an "
               "assumption — no published Orin prefill points")


def _bandwidth(device_key: str) -> float:
    from slm.profiling.devices import get_device

    return get_device(device_key).bandwidth_GBps * 1e9


@dataclass(frozen=True)
class Fit:
    """One kernel family's fitted decode model, with how well it does on the published points."""

    group: str
    efficiency: float  # fraction of the datasheet bandwidth the weight/KV stream reaches
    overhead_s: dict  # backend → fixed seconds per token
    residuals: dict  # point key → predicted/measured − 1, fitted points
    held_out: dict  # the same for held-out points
    excluded: dict  # the same for excluded points (reported, not used)

    def seconds_per_token(self, backend: str, bytes_per_token: float, bandwidth_Bps: float) -> float:
        return bytes_per_token / (self.efficiency * bandwidth_Bps) + self.overhead_s[backend]

    def predict(self, p: Point) -> float:
        return 1.0 / self.seconds_per_token(p.backend, p.bytes_per_token, _bandwidth(p.device))

    @property
    def held_out_error(self) -> float:
        """Largest absolute relative error on the held-out points."""
        return max(abs(v) for v in self.held_out.values())

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean(np.square(list(self.residuals.values())))))

    def label(self, backend: str) -> str:
        return (f"projected: {self.group} calibration ({backend}) on {len(self.residuals)} published Orin points, "
                f"held-out error ±{self.held_out_error:.0%} on {len(self.held_out)} more")

    def to_dict(self) -> dict:
        return {"group": self.group, "efficiency": self.efficiency, "overhead_s": dict(self.overhead_s),
                "fit_rms": self.rms, "held_out_error": self.held_out_error, "residuals": dict(self.residuals),
                "held_out": dict(self.held_out), "excluded": dict(self.excluded)}


def fit_group(group: str, points: tuple[Point, ...] = POINTS) -> Fit:
    """Least squares on relative error: minimise Σ ((x_i / e + c_b(i)) / t_i − 1)² over 1/e and each c_b."""
    backends = GROUPS[group]
    mine = [p for p in points if p.backend in backends]
    fit = [p for p in mine if p.role == "fit"]
    if len(fit) < len(backends) + 1:
        raise SlmError(f"calibration group {group} has {len(fit)} fit points: too few for {len(backends) + 1} parameters")
    t = np.array([1.0 / p.decode_tok_s for p in fit])
    x = np.array([p.bytes_per_token / _bandwidth(p.device) for p in fit])
    cols = [x / t] + [np.array([p.backend == b for p in fit], dtype=float) / t for b in backends]
    sol, *_ = np.linalg.lstsq(np.column_stack(cols), np.ones(len(fit)), rcond=None)
    partial = Fit(group, float(1.0 / sol[0]), dict(zip(backends, map(float, sol[1:]))), {}, {}, {})

    def errors(role):
        return {p.key: partial.predict(p) / p.decode_tok_s - 1 for p in mine if p.role == role}

    return Fit(group, partial.efficiency, partial.overhead_s, errors("fit"), errors("held-out"), errors("excluded"))


@functools.cache
def fit_all() -> dict[str, Fit]:
    return {g: fit_group(g) for g in GROUPS}


def calibration_for(backend: str, device_key: str) -> tuple[Fit, str, str]:
    """(fit, backend whose overhead applies, caveat) for projecting `backend` onto `device_key`."""
    for group, backends in GROUPS.items():
        if backend in backends:
            caveat = "" if "orin" in device_key else f"extrapolated: no published points on {device_key}"
            return fit_all()[group], backend, caveat
    return (fit_all()["llama.cpp"], "llama.cpp CUDA",
            f"extrapolated: no published Jetson points for {backend}; the llama.cpp CUDA calibration is used")


def project_decode(device, weight_bytes: float, kv_bytes_per_token: float, depth: float,
                   backend: str = "llama.cpp CUDA") -> dict:
    """Projected decode tok/s at `depth` on `device` (a devices.Device), with the bound, calibration and error."""
    fit, b, caveat = calibration_for(backend, device.key)
    bw = device.bandwidth_GBps * 1e9
    per_token = weight_bytes + kv_bytes_per_token * depth
    return {"tok_s": 1.0 / fit.seconds_per_token(b, per_token, bw), "device_bound_tok_s": bw / per_token,
            "calibration": fit.label(b) + (f" ({caveat})" if caveat else ""), "expected_error": fit.held_out_error,
            "efficiency": fit.efficiency, "overhead_s": fit.overhead_s[b], "bytes_per_token": per_token}


def project_prefill(device, spec, n_tokens: int) -> dict:
    """Prefill is not calibrated: the datasheet-derived FP16 bound × PREFILL_ASSUMED, labelled so."""
    from slm.profiling.roofline import prefill_bound

    bound = prefill_bound(device.fp16_tflops * 1e12, spec, n_tokens)
    return {"tok_s": PREFILL_ASSUMED * bound, "device_bound_tok_s": bound, "calibration": PREFILL_HOW,
            "expected_error": None}


def table_rows() -> list[list]:
    """Every published point with its prediction, for reports and docs."""
    fits = fit_all()
    out = []
    for p in POINTS:
        g = next((g for g, bs in GROUPS.items() if p.backend in bs), None)
        pred = fits[g].predict(p) if g else None
        out.append([p.key, p.device, p.backend, p.model, p.role, p.decode_tok_s,
                    None if pred is None else round(pred, 1),
                    None if pred is None else round(pred / p.decode_tok_s - 1, 3), p.source])
    return out
