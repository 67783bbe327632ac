"""`profile`: put the backends, KV analysis, quant sweep, roofline and device projection together into one
JSON result (schema_version, stable keys) — slm.profiling.report writes it, its figures
(slm.profiling.figures) into slm.json, and the HTML report.

Inputs (see `Inputs`): a GGUF, an HF folder, an ONNX folder, GGUFs made by the exporter, or a bare config.json
(projection only). `where` says how the measured rows were obtained: here, on the device, or over SSH.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from slm.errors import SlmError
from slm.gguf import TYPES
from slm.profiling import devices, kv, roofline, sweep
from slm.profiling.args import Inputs, ProfileArgs
from slm.profiling.calibration import calibration_for, engine_backend, fit_prefill, mode_label, project
from slm.profiling.latency import measure_latency
from slm.profiling.memory import llamacpp_memory
from slm.profiling.ops import PASS, breakdown
from slm.profiling.ortgenai import OrtGenai, spec_of
from slm.profiling.protocol import BenchArgs, peak_rss_bytes, reset_peak_rss, run_tests
from slm.profiling.sweep import SweepArgs
from slm.profiling.torch_backend import Torch
from slm.quant.llamacpp import LlamaCpp
from slm.spec import load_spec, spec_from_gguf

# 3: `where` (measured here / on the device / over SSH) replaces the flat summary; every measured row carries
# reps, ci95, ci_rel, disturbed, wide, flags, other_cpu_share (slm.profiling.protocol)
SCHEMA_VERSION = 3


def _spec(inputs: Inputs):

    if inputs.hf:
        return load_spec(inputs.hf)
    if inputs.config:
        return load_spec(inputs.config)
    if inputs.gguf:
        return spec_from_gguf(inputs.gguf)
    if inputs.onnx:

        return spec_of(inputs.onnx)
    raise SlmError("nothing to profile: pass a GGUF, an HF folder, an ONNX folder or --config config.json")


def check(inputs: Inputs, args: ProfileArgs, spec) -> None:
    """Refuse bad combinations before any long work."""
    need = args.bench.context_needed()
    if inputs.gguf or inputs.hf or inputs.onnx:
        if need > spec.max_context:
            raise SlmError(f"the tests need a context of {need} tokens, above the model's max context "
                           f"{spec.max_context}: lower --pp/--depths/--tg/--latency-prompt")
    if inputs.config and not (inputs.gguf or inputs.hf) and len(args.quant) > 1:
        raise SlmError("--config projects one quantization type: pass a single --quant (e.g. q4_k_m)")


def _roofline_rows(rows: list[dict], host: dict, spec, weight_bytes: float, kv_per_tok: float,
                   peak: float) -> None:
    """Add each row's roofline bound and the fraction of it reached (in place)."""
    for r in rows:
        if r["kind"] == "decode":
            # the bandwidth at this step's working set: a small model's weights may sit in the cache
            ws = weight_bytes + kv_per_tok * (r["depth"] + r["n_tokens"] / 2)
            b = roofline.decode_bound(roofline.bandwidth_at(host, ws), weight_bytes, kv_per_tok,
                                      r["depth"] + r["n_tokens"] / 2)
            r["roofline_memory"] = roofline.memory_level(host, ws)
        else:
            b = roofline.prefill_bound(peak, spec, r["n_tokens"])
        r["roofline_tok_s"], r["roofline_fraction"] = b, r["tok_s"] / b
        # Where the test sits on the roofline plot. Prefill reads the weights once per ubatch of 512 tokens
        # (llama.cpp's default n_ubatch), decode once per token plus the cache so far.
        ctx = r["depth"] + r["n_tokens"] / 2 if r["kind"] == "decode" else r["n_tokens"] / 2
        fpt = (roofline.flops_per_token(spec, ctx) if r["kind"] == "decode"
               else roofline.prefill_flops_per_token(spec, r["n_tokens"]))
        per_read = min(r["n_tokens"], 512) if r["kind"] == "prefill" else 1
        r["arith_intensity"] = per_read * fpt / (weight_bytes
                                                 + (kv_per_tok * ctx if r["kind"] == "decode" else 0))
        r["attained_flops"] = r["tok_s"] * fpt


def _backend(name: str, inputs: Inputs, args: ProfileArgs, on_jetson: bool = False):
    t = args.bench.threads
    if name == "llama.cpp" and inputs.gguf:

        # on a Jetson, offload every layer to its GPU, as one deploys there
        return LlamaCpp(inputs.gguf, args.bench.context_needed(), t, seed=args.bench.seed,
                        gpu_layers=999 if on_jetson else 0)
    if name == "torch" and inputs.hf:

        return Torch(inputs.hf, t, seed=args.bench.seed)
    if name == "onnxruntime-genai" and inputs.onnx:

        return OrtGenai(inputs.onnx, t, seed=args.bench.seed)
    return None


def profile(inputs: Inputs, args: ProfileArgs, work_dir: Path,
            progress: Callable[[str], None] = print) -> dict:
    """Run everything `args` asks for; return the result dict (JSON-able). `work_dir` receives quantized
    files."""
    t0 = time.time()
    spec = _spec(inputs)
    check(inputs, args, spec)
    # ---- where the figures come from: this host, the device itself, and the device to project onto ---------
    here = devices.detect()
    how = f"measured on the device ({here.name})" if here else "measured on this host"
    target = devices.get_device(args.device) if args.device != "host" else here
    measuring = bool(inputs.gguf or inputs.hf or inputs.onnx)
    t = args.bench.threads
    host = roofline.host_peaks(t, refresh=args.refresh_host) if measuring else roofline.cached_peaks(t)
    res = {"schema_version": SCHEMA_VERSION, "how": how,
           "where": "measured on the device" if here else "measured here",
           "model": {**spec.summary(), "inputs": {
        k: str(v) for k, v in asdict(inputs).items() if v and k != "files"}}, "args": args.to_dict(),
        "threads": t, "notes": [n for n in (inputs.source_note, inputs.cache_note) if n],
        "host": {**host, "cpu": roofline.cpu_model(), "detected_device": here.key if here else None}}
    # ---- backends, KV cache, quantization sweep, projection ------------------------------------------------
    res["backends"] = measure_backends(inputs, args, spec, host, how, here is not None, progress)
    res["notes"] += host.pop("notes", [])  # a test that stayed above its bound
    res["host"].update(host)  # peaks measured again when a test ran above its bound
    main = res["backends"].get("llama.cpp")
    weight_bytes = main["weight_bytes"] if main else _planned_weight_bytes(spec, args)
    res["kv"], compute = kv_section(inputs, args, spec, weight_bytes,
                                    main["memory"].get("compute", 0.0) if main else 0.0, progress)
    if args.quant and (inputs.gguf or inputs.files):
        res["sweep"] = sweep_section(inputs, args, spec, host, how, work_dir, progress)
    if target is not None and not here:
        res["projection"] = _project(target, res, spec, weight_bytes, compute, args)
    res["elapsed_s"] = time.time() - t0
    if main:
        roofline.save_efficiency(t, main["rows"])
    return res


def measure_backends(inputs: Inputs, args: ProfileArgs, spec, host: dict, how: str, on_jetson: bool,
                     progress: Callable[[str], None]) -> dict:
    """name → rows of the protocol's tests (with roofline bounds), memory, peak RSS, for each backend with
    input."""
    out = {}
    for name in args.backends:
        reset_peak_rss()
        b = _backend(name, inputs, args, on_jetson)
        if b is None:
            continue
        bench = args.bench if (name == "llama.cpp" or args.full_all) else lighter_protocol(args.bench)
        with b:
            progress(f"{name}: loaded; running {len(bench.pp)} prefill and {len(bench.depths)} decode tests")
            rows = run_tests(b, bench, progress)
            lat = None
            if bench.latency_prompt and hasattr(b, "stream"):  # the backends an app streams from
                progress(f"{name}: latency, {bench.latency_prompt}-token prompt + {bench.latency_tokens} "
                         "tokens")
                lat = measure_latency(b.stream, bench.latency_prompt, bench.latency_tokens, bench)
            mem = b.memory()
            ops = _ops(name, b, bench, progress) if args.ops else None
        wb = mem.get("weights") or spec.weight_bytes()
        for attempt in range(2):
            dtype_peak = host.get("peaks", {}).get(getattr(b, "dtype", ""), 0.0)  # torch: its dtype's peak
            peak = dtype_peak or host["flops"]
            _roofline_rows(rows, host, spec, wb, kv.kv_bytes(spec, 1, "f16"), peak)
            if attempt or host.get("cached") is False or all(r["roofline_fraction"] <= 1 for r in rows):
                break
            # a test above its bound: the cached peaks were measured in a disturbed moment; measure them again
            progress("a test ran above its roofline bound: re-measuring the host's bandwidth and matmul peak")
            host.update(roofline.host_peaks(bench.threads, refresh=True), remeasured=True)
        above = [r["test"] for r in rows if r["roofline_fraction"] > 1]
        if above:
            host.setdefault("notes", []).append(
                f"{name}: {', '.join(above)} ran above its roofline bound after the peaks were measured "
                "afresh (a noisy moment in the copy or matmul timing); read those fractions as ≈ 1")
        for r in rows:
            r["how"] = how
        if name == "llama.cpp":  # the model's own memory, apart from this process's
            mem_check = llamacpp_memory(inputs.gguf, spec, bench.context_needed(), bench.threads, mem,
                                        progress)
        out[b.name] = {"rows": rows, "memory": mem, "peak_rss": peak_rss_bytes(), "threads": bench.threads,
                       **({"llama_memory": mem_check} if name == "llama.cpp" else {}),
                       "protocol": bench.to_dict(), "weight_bytes": wb, "compute_peak_flops": peak,
                       **({"ops": ops} if ops else {}), **({"latency": lat} if lat else {})}
    return out


def _ops(name: str, b, bench: BenchArgs, progress: Callable[[str], None]) -> dict | None:
    """The operator breakdown of a loaded backend, after its timed tests (a prompt of the longest tested
    length up to one ubatch, 512 tokens, then up to 16 decode steps)."""

    n_prompt = max([n for n in bench.pp if n <= 512] or [min(bench.pp)])
    progress(f"{name}: operator profile (prefill of {n_prompt} tokens, decode steps)")
    return breakdown(name, b, n_prompt, min(bench.tg or PASS["n_decode"], PASS["n_decode"]))


def kv_section(inputs: Inputs, args: ProfileArgs, spec, weight_bytes: float, compute: float,
               progress: Callable[[str], None]) -> tuple[dict, float]:
    """The analytic share curve per cache type and llama.cpp's measured allocation; returns it and the compute
    buffer bytes the curve used (measured at the largest f16 context when there is a GGUF)."""
    measured, skipped = [], []
    if inputs.gguf:
        ctxs = [c for c in args.kv_contexts if c <= spec.max_context]
        for t in args.kv_types:
            progress(f"KV cache: measuring llama.cpp's {t} allocation at {ctxs}")
            measured += kv.measure_llamacpp(inputs.gguf, spec, ctxs, t, args.bench.threads, skipped)
        for s in skipped:
            progress(f"KV cache: {s['cache_type']} not measured: {s['reason']}")
        # the compute buffers at the largest measured context stand for the curve's constant term
        compute = max((r["compute"] for r in measured if r["cache_type"] == "f16"), default=compute)
    return {"analytic": {t: kv.share_curve(spec, weight_bytes, t, compute) for t in args.kv_types},
            "measured": measured, "skipped": skipped}, compute


def sweep_section(inputs: Inputs, args: ProfileArgs, spec, host: dict, how: str, work_dir: Path,
                  progress: Callable[[str], None]) -> dict:
    """Every asked type's file made (or taken from the export), measured and scored; the worded answer."""

    sa = SweepArgs(types=args.quant, pp=args.sweep_pp, tg=args.sweep_tg, reps=args.sweep_reps,
                   chunks=args.ppl_chunks, threads=args.bench.threads, kv_types=args.kv_types,
                   kv_ctx=args.kv_quality_ctx, kv_chunks=max(1, args.kv_quality_chunks))
    src = Path(inputs.files.get("f16") or inputs.gguf)
    files = sweep.make_files(src, sa.types, work_dir, args.bench.threads, inputs.files, progress)
    rows = sweep.run_sweep(files, sa, progress)
    for r in rows:
        r["how"] = how
        ws = r["size_bytes"] + kv.kv_bytes(spec, 1) * args.sweep_tg / 2
        r["tg_roofline_fraction"] = r["tg_tok_s"] / roofline.decode_bound(
            roofline.bandwidth_at(host, ws), r["size_bytes"], kv.kv_bytes(spec, 1), args.sweep_tg / 2)
    out = {"rows": rows, "answer": sweep.answer(rows), "source": str(src), "scoring": sa.scoring.to_dict()}
    # a KV type llama.cpp cannot use for this head size is skipped with its reason, never measured as free
    skipped = {t: why for t in args.kv_types if t != "f16" and (why := kv.unusable_reason(spec, t))}
    usable = tuple(t for t in sa.kv_types if t not in skipped)
    if args.kv_quality_chunks and any(t != "f16" for t in usable):
        # on the sweep's reference weights, so the KV figures add to its types' KLD (slm plan does)
        ref = sa.types[0]
        try:
            out["kv_quality"] = sweep.run_kv_quality(Path(files[ref]), ref, replace(sa, kv_types=usable),
                                                     spec.max_context, progress)
        except SlmError as e:  # the timed sweep above is kept; the KV rows say why they are missing
            out["kv_quality"] = {"rows": [], "error": str(e)}
        for r in out["kv_quality"]["rows"]:
            r["how"] = how
    if skipped:
        out.setdefault("kv_quality", {"rows": []})["skipped"] = skipped
    return out


def lighter_protocol(b: BenchArgs) -> BenchArgs:
    """The lighter protocol of the secondary backends (see ProfileArgs.full_all)."""
    return replace(b, pp=b.pp[:2], tg=min(b.tg, 32), depths=b.depths[:2], reps=min(b.reps, 2),
                   max_reps=max(min(b.reps, 2), min(b.max_reps, 10)))


def _planned_weight_bytes(spec, args: ProfileArgs) -> float:
    """Weights of a model with no file yet: its parameters at the first asked type's nominal bits per
    weight."""
    return spec.params * TYPES[(args.quant or ("f16",))[0]].bpw / 8


def _project(dev, res: dict, spec, weight_bytes: float, compute: float, args: ProfileArgs) -> dict:
    """The protocol's tests projected onto `dev` by the calibrated device model (slm.profiling.calibration):
    the same inputs give the same projection whatever this host measured or cached; measured host rows only
    lend their test list and show their own efficiency as a host figure."""

    kv_tok = kv.kv_bytes(spec, 1, "f16")
    main = res["backends"].get("llama.cpp")
    b = args.bench
    rows = main["rows"] if main else (
        [{"test": f"pp{n}", "kind": "prefill", "n_tokens": n, "depth": 0} for n in b.pp]
        + [{"test": f"tg{b.tg}@d{d}", "kind": "decode", "n_tokens": b.tg, "depth": d} for d in b.depths])
    engine = engine_backend(args.engine)
    proj = project(dev, rows, weight_bytes, kv_tok, spec, compute, engine, args.power_mode)
    fit, backend, caveat = calibration_for(engine, dev.key)
    fit_ctx = [r["context"] for r in res["kv"]["analytic"]["f16"]["rows"]
               if devices.fits(dev, weight_bytes, r["kv_cache"], compute)]
    return {"device": dev.to_dict(), "how": "projected", "rows": proj, "engine": args.engine,
            "power_mode": mode_label(dev.key, args.power_mode),
            "max_context_that_fits_f16_kv": max(fit_ctx, default=0),
            "calibration": fit.label(backend) + (f" ({caveat})" if caveat else ""),
            "expected_error": fit.held_out_error,
            "inputs": {"weight_bytes": weight_bytes, "kv_bytes_per_token_f16": kv_tok,
                       "compute_buffer_bytes": compute, "device_bandwidth_GBps": dev.bandwidth_GBps,
                       "device_gpu_fp16_tflops": dev.fp16_tflops, "decode_efficiency_fitted": fit.efficiency,
                       "decode_overhead_s_fitted": fit.overhead_s[backend],
                       "decode_from": fit.label(backend), "prefill_from": next(
                           (r["calibration"] for r in proj if r["kind"] == "prefill"), fit_prefill().label),
                       "host_figures": "shown as measured here, not used to scale the device",
                       "os_reserve_gib": devices.OS_RESERVE_GIB},
            "flagged": [r["test"] for r in proj if not r["fits"]]}
