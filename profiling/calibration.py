"""The device model: decode speed on a Jetson from bytes read per token, fitted to published measurements.

Model (per kernel family, fitted on Jetson Orin points; slm.profiling.calibration_table holds the cited data):

    decode seconds per token = bytes read per token / (efficiency × device bandwidth) + overhead[backend]
    bytes read per token     = weight bytes streamed (all but an untied input embedding: a lookup reads one
                               row of it) + KV bytes per token × depth

The overhead is a fixed cost per token (kernel launches, sampling, the server loop); it dominates small
models. Efficiency and overheads are fitted by least squares on the RELATIVE error (each point's predicted
time divided by its measured time, minus one), so a 135M model at 165 tok/s weighs as much as a 70B one at 3
tok/s.

Groups, and why they are pooled: published points are thin, so every Orin module is pooled (one Ampere sm_87
iGPU design; the bandwidth term carries the difference between Orin Nano 68 GB/s, Nano Super 102 GB/s and AGX
Orin 204.8 GB/s), and llama.cpp CUDA is pooled with Ollama, which runs llama.cpp's CUDA kernels behind a
server: one efficiency (the kernels) and one overhead per backend (the host loop around them). MLC is its own
group, with its own efficiency for Gemma-2 (FAMILY_TERMS says why). Each group's held-out points were chosen
in the table (role) before any fit was run, and no held-out point has been moved since.

Fit (computed from the table by `fit_all`; tests/profiling/test_calibration.py recomputes it and holds these
numbers to ±0.01 / ±0.1 ms):

- llama.cpp (llama.cpp CUDA + Ollama), Orin: 9 points fitted, 6 held out; efficiency 0.62; overhead 3.9 ms per
  token (llama.cpp CUDA), 7.2 ms (Ollama); fit residuals −18 % … +69 % (RMS 28 %); held-out errors +12.9 %
  (SmolLM-135M Q2_K, Nano Super), +21.1 % (Qwen2.5-3B Q4_K_M tg128, Nano Super), +4.4 % (8B Q4_K_M, AGX),
  −3.6 % (14B tg128, AGX), −7.4 % (32B tg128, AGX), −11.1 % (Llama-3.2-3B Ollama, Nano Super).
- MLC, Orin: 10 fitted, 3 held out; efficiency 0.91 (Gemma-2: 0.53); overhead 5.6 ms; residuals −7 % … +8 %
  (RMS 4 %); held-out −7.1 % (Llama-3.2-3B), −12.1 % (Gemma-2-2B), −6.5 % (Phi-3.5-mini), all Nano Super.

Both meet a ±25 % held-out target for 135M–8B (worst +21.1 % and −12.1 %). The largest residual is
Qwen2.5-0.5B under Ollama (+69 %: at 0.5B the server's overhead varies more than one constant captures).
Projections carry the held-out worst as their expected error (±21 % for llama.cpp); the fit's RMS (28 %) is
wider, so a single model can be further off, as Qwen2.5-0.5B is. Weakness of the MLC test: the Gemma-2
family term was added when the held-out Gemma-2-2B Super error was already known, so its −12.1 % checks the
term's consistency (2B Super predicted from 2B Nano and 9B) rather than being a blind test; the three tg128
llama.cpp points held out above were added after the fit, and are blind.

Prefill (fit_prefill): tok/s = efficiency × the GPU's dense FP16 throughput (devices.Device.fp16_tflops: GPU
sparse INT8 TOPS / 4, DLAs left out) / forward FLOPs per prompt token (roofline.prefill_flops_per_token: mean
context n/2, the LM head once per prompt), fitted to llama-bench pp512 of llama.cpp CUDA: Qwen2.5-3B on an
Orin Nano Super (874.8 tok/s) and Qwen-32B on an AGX Orin at MAXN (201.7), both fitted, efficiency 0.30
(residuals −0.7 %, +0.7 %); held out: Qwen-14B on the same AGX (455.5), +3.5 %. Excluded and reported: the 32B
in the AGX's 30 W mode (+56 %: lower clocks than the registry's MAXN figures) and two points of a table whose
decode shows a throttled board (+308 %, +333 %). Before the DLAs were taken out of the AGX's figure the same
points implied 0.18 on the AGX against 0.29 on the Nano: the GPU-only figure is what makes one efficiency fit
both. All points are Q4_K_M files, whose prompt matmuls run llama.cpp's int8 kernels: the efficiency absorbs
that, and its use for other types (f16, q8_0) is untested. What this does not cover: models below 3B (no
point; at 135M per-kernel overheads, not FLOPs, likely bound pp512, so a small model's projected prefill is an
upper estimate) and one held-out point is a thin test.

Engines (`--engine`, ENGINES): llama.cpp projects with the llama.cpp group's fit, mlc with MLC's, each with
its own held-out error. Power modes (`--power-mode`): the MAXN projection scaled by what the nvpmodel mode
changes (slm.profiling.calibration_modes, fitted on published non-MAXN points, its held-out error apart).

Backends without points (onnxruntime-genai, llama.cpp CPU: one point) and devices without points (AGX Thor)
get the llama.cpp Orin calibration labelled "extrapolated", never a host measurement: a projection depends on
the table and the device registry only, never on ~/.cache/slm/host.json.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from slm.errors import SlmError
from slm.profiling.calibration_modes import ModeFit, fit_modes, mode_how, terms
from slm.profiling.calibration_table import POINTS, PREFILL_POINTS, Point, PrefillPoint
from slm.profiling.devices import Device, fits, get_device
from slm.profiling.roofline import prefill_bound
from slm.spec import spec_from_config

GROUPS = {"llama.cpp": ("llama.cpp CUDA", "Ollama"), "MLC": ("MLC",)}  # kernel family → backends sharing it
# `--engine` → the backend whose calibration projects it (each its own fit and held-out error)
ENGINES = {"llama.cpp": "llama.cpp CUDA", "mlc": "MLC"}


def engine_backend(engine: str) -> str:
    """The calibrated backend of an --engine name; an engine without a calibration is a one-line error."""
    b = ENGINES.get(engine.lower()) if isinstance(engine, str) else None
    if b is None:
        raise SlmError(f"--engine {engine}: no calibration for it; engines with published Jetson points are "
                       f"{', '.join(ENGINES)} (slm plan also takes 'all')")
    return b
# Architectures a group fits its own efficiency for. For MLC's three FITTED Gemma-2 points the pooled model
# predicted speeds 39–60 % too high (Gemma-2-2B Nano, 9B Nano and Super) while every other fitted point was
# within ±15 %: MLC's Gemma-2 kernels (256-wide heads, logit soft-capping, four norms a block) reach less of
# the bandwidth. Ollama's one Gemma-2 point shows no such effect (−18 %, within the group's spread), so
# llama.cpp has no term. slm projects Llama-family models only (slm.spec.SUPPORTED): a family term keeps
# Gemma-2 from biasing their efficiency and is itself tested on the held-out Gemma-2-2B Super point.
FAMILY_TERMS = {"llama.cpp": (), "MLC": ("gemma2",)}


def _bandwidth(device_key: str) -> float:
    return get_device(device_key).bandwidth_GBps * 1e9


@dataclass(frozen=True)
class Fit:
    """One kernel family's fitted decode model, with how well it does on the published points."""

    group: str
    efficiency: float  # fraction of the datasheet bandwidth the weight/KV stream reaches (Llama family)
    overhead_s: dict  # backend → fixed seconds per token
    residuals: dict  # point key → predicted/measured − 1, fitted points
    held_out: dict  # the same for held-out points
    excluded: dict  # the same for excluded points (reported, not used)
    family_efficiency: dict = dataclasses.field(default_factory=dict)  # architecture → its own efficiency

    def seconds_per_token(self, backend: str, bytes_per_token: float, bandwidth_Bps: float,
                          family: str = "llama") -> float:
        eff = self.family_efficiency.get(family, self.efficiency)
        return bytes_per_token / (eff * bandwidth_Bps) + self.overhead_s[backend]

    def predict(self, p: Point) -> float:
        return 1.0 / self.seconds_per_token(p.backend, p.bytes_per_token, _bandwidth(p.device), p.family)

    @property
    def held_out_error(self) -> float:
        """Largest absolute relative error on the held-out points."""
        return max(abs(v) for v in self.held_out.values())

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean(np.square(list(self.residuals.values())))))

    def label(self, backend: str) -> str:
        return (f"projected: {self.group} calibration ({backend}) on {len(self.residuals)} published Orin "
                f"points, held-out error ±{self.held_out_error:.0%} on {len(self.held_out)} more")

    def to_dict(self) -> dict:
        return {"group": self.group, "efficiency": self.efficiency, "overhead_s": dict(self.overhead_s),
                "fit_rms": self.rms, "held_out_error": self.held_out_error, "residuals": dict(self.residuals),
                "held_out": dict(self.held_out), "excluded": dict(self.excluded),
                "family_efficiency": dict(self.family_efficiency)}


def fit_group(group: str, points: tuple[Point, ...] = POINTS) -> Fit:
    """Least squares on relative error: minimise Σ ((x_i / e_f(i) + c_b(i)) / t_i − 1)² over 1/e for the Llama
    family and each of the group's FAMILY_TERMS, and each backend's overhead c_b."""
    backends, families = GROUPS[group], FAMILY_TERMS[group]
    mine = [p for p in points if p.backend in backends]
    fit = [p for p in mine if p.role == "fit"]
    n_params = 1 + len(families) + len(backends)
    if len(fit) < n_params + 1:
        raise SlmError(f"calibration group {group} has {len(fit)} fit points: too few for {n_params} "
                       "parameters")
    t = np.array([1.0 / p.decode_tok_s for p in fit])
    x = np.array([p.bytes_per_token / _bandwidth(p.device) for p in fit])
    own = [np.array([p.family == f for p in fit], dtype=float) for f in families]
    base = 1.0 - sum(own, np.zeros(len(fit)))
    cols = ([x * base / t] + [x * m / t for m in own]
            + [np.array([p.backend == b for p in fit], dtype=float) / t for b in backends])
    sol, *_ = np.linalg.lstsq(np.column_stack(cols), np.ones(len(fit)), rcond=None)
    k = 1 + len(families)
    partial = Fit(group, float(1.0 / sol[0]), dict(zip(backends, map(float, sol[k:]))), {}, {}, {},
                  {f: float(1.0 / v) for f, v in zip(families, sol[1:k])})

    def errors(role):
        return {p.key: partial.predict(p) / p.decode_tok_s - 1 for p in mine if p.role == role}

    return dataclasses.replace(partial, residuals=errors("fit"), held_out=errors("held-out"),
                               excluded=errors("excluded"))


@functools.cache
def fit_all() -> dict[str, Fit]:
    return {g: fit_group(g) for g in GROUPS}


@functools.cache
def mode_fit() -> ModeFit:
    """What a power mode changes, fitted over the llama.cpp MAXN fit (slm.profiling.calibration_modes)."""
    return fit_modes(fit_all()["llama.cpp"])


def mode_terms(device_key: str, mode: str | None) -> dict:
    """The scales `mode` applies to a MAXN projection on `device_key`, and its label."""
    return terms(device_key, mode, mode_fit())


def mode_label(device_key: str, mode: str | None) -> str:
    """The mode's label, with how its terms were fitted and their held-out error when it is not MAXN."""
    t = mode_terms(device_key, mode)
    return t["label"] + ("" if t["decode_scale"] == 1.0 else f"; {mode_how(mode_fit())}")


def calibration_for(backend: str, device_key: str) -> tuple[Fit, str, str]:
    """(fit, backend whose overhead applies, caveat) for projecting `backend` onto `device_key`."""
    for group, backends in GROUPS.items():
        if backend in backends:
            caveat = "" if "orin" in device_key else f"extrapolated: no published points on {device_key}"
            return fit_all()[group], backend, caveat
    return (fit_all()["llama.cpp"], "llama.cpp CUDA",
            f"extrapolated: no published Jetson points for {backend}; the llama.cpp CUDA calibration is used")


def streamed_weight_bytes(spec, weight_bytes: float) -> float:
    """Weight bytes a decode step reads: all of them but an untied input embedding, of which a lookup reads
    one row (calibration_table's rule). The embedding's share is taken at the file's mean bits per weight."""
    if spec.tied:
        return weight_bytes
    return weight_bytes * (1 - spec.vocab * spec.hidden / spec.params)


def project_decode(device, weight_bytes: float, kv_bytes_per_token: float, depth: float,
                   backend: str = "llama.cpp CUDA", power_mode: str | None = None) -> dict:
    """Projected decode tok/s at `depth` on `device` (a devices.Device) in `power_mode` (None: MAXN), with
    the bound, calibration and error. `weight_bytes` are the bytes streamed per token
    (streamed_weight_bytes), not necessarily the file's."""
    fit, b, caveat = calibration_for(backend, device.key)
    mode = mode_terms(device.key, power_mode)
    bw = device.bandwidth_GBps * 1e9 * mode["decode_scale"]
    per_token = weight_bytes + kv_bytes_per_token * depth
    return {"tok_s": 1.0 / fit.seconds_per_token(b, per_token, bw), "device_bound_tok_s": bw / per_token,
            "calibration": fit.label(b) + (f" ({caveat})" if caveat else ""),
            "expected_error": fit.held_out_error, "efficiency": fit.efficiency,
            "overhead_s": fit.overhead_s[b], "bytes_per_token": per_token, "power_mode": mode["label"]}


# ---- prefill -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefillFit:
    """Prefill tok/s = efficiency × the GPU's dense FP16 throughput / FLOPs per token (mean context n/2),
    fitted to published llama-bench ppN figures of llama.cpp CUDA on Orin GPUs."""

    efficiency: float
    residuals: dict  # point key → predicted/measured − 1
    held_out: dict
    excluded: dict
    params_range: tuple  # smallest and largest model (parameters) among the fitted and held-out points
    prompts: list  # prompt lengths of the fitted points

    @property
    def held_out_error(self) -> float:
        return max(abs(v) for v in self.held_out.values())

    @property
    def label(self) -> str:
        lo, hi = (f"{x / 1e9:.0f}B" for x in self.params_range)
        pp = ",".join(f"pp{n}" for n in self.prompts)
        return (f"projected: llama.cpp CUDA prefill calibration, {self.efficiency:.2f} of the GPU's FP16 "
                f"bound, fitted on {len(self.residuals)} published Orin {pp} points ({lo}–{hi} models), "
                f"held-out error ±{self.held_out_error:.0%} on {len(self.held_out)} more")

    def to_dict(self) -> dict:
        return {"efficiency": self.efficiency, "held_out_error": self.held_out_error,
                "residuals": dict(self.residuals), "held_out": dict(self.held_out),
                "excluded": dict(self.excluded)}


def prefill_bound_of(p: PrefillPoint) -> float:
    return prefill_bound(get_device(p.device).fp16_tflops * 1e12, spec_from_config(p.config), p.n_prompt)


@functools.cache
def fit_prefill() -> PrefillFit:
    """One efficiency, least squares on relative error: minimise Σ (e·k_i − 1)² with k_i = bound_i /
    measured_i, so e = Σk / Σk² (the weights read once per 512-token micro-batch are ~3 % of a 3B's pp512
    time: left out)."""
    points = PREFILL_POINTS
    fit = [p for p in points if p.role == "fit"]
    k = np.array([prefill_bound_of(p) / p.prefill_tok_s for p in fit])
    e = float(k.sum() / np.square(k).sum())

    def errors(role):
        return {p.key: e * prefill_bound_of(p) / p.prefill_tok_s - 1 for p in points if p.role == role}


    sizes = [spec_from_config(p.config).params for p in points if p.role != "excluded"]
    return PrefillFit(e, errors("fit"), errors("held-out"), errors("excluded"), (min(sizes), max(sizes)),
                      sorted({p.n_prompt for p in fit}))


def project_prefill(device, spec, n_tokens: int, backend: str = "llama.cpp CUDA",
                    power_mode: str | None = None) -> dict:
    """Projected prefill tok/s of an n_tokens prompt on `device` in `power_mode` (None: MAXN): the calibrated
    fraction of its GPU FP16 bound, scaled by the mode's term."""

    fit = fit_prefill()
    bound = prefill_bound(device.fp16_tflops * 1e12, spec, n_tokens) * mode_terms(device.key, power_mode)[
        "prefill_scale"]
    small = spec.params < 0.9 * fit.params_range[0]  # kernel overheads, not FLOPs, may bound small models
    caveats = [c for c in (
        "" if "orin" in device.key else f"no published points on {device.key}",
        "" if backend == "llama.cpp CUDA" else f"no published prefill points for {backend}",
        "no published point this small: an upper estimate, its error unknown" if small else "") if c]
    return {"tok_s": fit.efficiency * bound, "device_bound_tok_s": bound,
            "calibration": fit.label + (f" (extrapolated: {'; '.join(caveats)})" if caveats else ""),
            "expected_error": None if small else fit.held_out_error, "efficiency": fit.efficiency}


def project(device: Device, rows: list[dict], weight_bytes: float, kv_per_token: float, spec,
            compute_bytes: float = 0.0, backend: str = "llama.cpp CUDA",
            power_mode: str | None = None) -> list[dict]:
    """Project the protocol's tests onto `device` with the calibrated model (slm.profiling.calibration).

    Each projected row carries its calibration and expected error; a test whose context does not fit the
    device's memory is flagged (fits=False) and gets no speed. A row's measured `roofline_fraction` (this
    host's) is kept as `host_efficiency` for display only.
    """
    streamed = streamed_weight_bytes(spec, weight_bytes)

    out = []
    for r in rows:
        ctx = r["depth"] + r["n_tokens"]
        kv = kv_per_token * ctx
        ok = fits(device, weight_bytes, kv, compute_bytes)
        if r["kind"] == "decode":
            p = project_decode(device, streamed, kv_per_token, r["depth"] + r["n_tokens"] / 2, backend,
                               power_mode)
        else:
            p = project_prefill(device, spec, r["n_tokens"], backend, power_mode)
        out.append({"test": r["test"], "kind": r["kind"], "n_tokens": r["n_tokens"], "depth": r["depth"],
                    "device": device.key, "how": "projected", "fits": ok,
                    "memory_needed": weight_bytes + kv + compute_bytes, "memory_usable": device.usable_bytes,
                    "device_bound_tok_s": p["device_bound_tok_s"], "calibration": p["calibration"],
                    "expected_error": p["expected_error"], "host_efficiency": r.get("roofline_fraction"),
                    "tok_s": p["tok_s"] if ok else None})
    return out
