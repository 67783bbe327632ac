"""`slm plan`: which depth × GGUF type × KV-cache type of a model fits a device at a context, and how fast it
could run there — before any training or export.

Every figure is computed from the shape alone: bytes per GGUF type from slm.gguf_mix.fallbacks_for (the types
llama.cpp really writes on this shape, fallbacks included), KV bytes from the spec, decode speed from the
calibrated device model (slm.profiling.calibration: fitted to published Jetson Orin measurements, its held-out
error stated in every output), prefill from the GPU's FP16 bound × the efficiency fitted to published
llama-bench pp512 figures (same module; fitted on 3B–32B models, an upper estimate below that). Quality (KLD,
perplexity) comes only from records of this very model — a profile's sweep (weights and KV-cache types), an
export's validation, a `--measure` run — otherwise it is "unknown", never guessed and never free. What is
recommended, the Pareto front and the one ranking shown are slm.profiling.plan_choice's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from slm.errors import SlmError
from slm.gguf import KV_CACHE_TYPES, get_type, kv_element_bytes, parse_types
from slm.gguf_mix import fallback_warning, fallbacks_for, types_that_hold
from slm.guard import guard_output
from slm.profiling.calibration import (
    ENGINES,
    calibration_for,
    engine_backend,
    fit_prefill,
    mode_label,
    mode_terms,
    project_decode,
    streamed_weight_bytes,
)
from slm.profiling.devices import GIB, get_device, get_mode
from slm.profiling.latency import projected_ttft_s
from slm.profiling.plan_choice import DEFAULT_MAX_KLD, check_max_kld, choose, mark_pareto, rank_key, ranking
from slm.profiling.plan_choice import sentence as choice_sentence
from slm.profiling.plan_measure import check_weights, measure
from slm.profiling.plan_report import write_plan  # matplotlib: only when a report is written
from slm.profiling.roofline import prefill_bound
from slm.record import model_sha256, read_record
from slm.spec import ModelSpec, load_spec
from slm.stats import ci95_se

DEFAULT_TYPES = ("f16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0", "iq4_nl")
UBATCH = 512  # llama.cpp's default n_ubatch: the compute buffers below are sized for one micro-batch
# MLC-LLM's weight formats (its docs, "Quantization Mode"): q4f16_1 = 4-bit weights with an fp16 scale per
# group of 32 (4.5 bits a weight, embeddings included), q0f16 = unquantized fp16; its KV cache is fp16. MLC
# does not run here, so their quality is never measured: "unknown", never recommended.
MLC_TYPES = {"q4f16_1": 4.5, "q0f16": 16.0}
HOW = "projected (calibrated device model)"


@dataclass
class PlanArgs:
    device: str  # registry key (profiling/devices.py), e.g. jetson-orin-nano-8gb
    context: int = 4096  # tokens of context the model must hold (KV cache and decode depth)
    min_decode: float | None = None  # required decode tok/s at that context
    min_prefill: float | None = None  # required prefill tok/s for a prompt of that context
    max_memory_gb: float | None = None  # memory budget in GB (default: the device's usable memory)
    grow: bool = False  # also consider LLaMA Pro expansions (N groups × P copies)
    prune: bool = False  # also consider depth-pruned variants (1/8, 1/4, 3/8 of the blocks dropped)
    types: tuple = DEFAULT_TYPES  # GGUF types considered
    kv_types: tuple = KV_CACHE_TYPES  # KV-cache element types considered
    # whose calibration projects speed: llama.cpp (CUDA) | mlc | all (each engine's plan side by side)
    engine: str = "llama.cpp"
    power_mode: str = ""  # nvpmodel mode of the device (slm.profiling.devices.POWER_MODES); "": MAXN
    backend: str = "llama.cpp CUDA"  # set from `engine` (slm.profiling.calibration.ENGINES)
    measure: bool = False  # measure every candidate's quality as it runs (slm.profiling.plan_measure)
    threads: int = 1  # CPU threads for --measure
    # fraction of the GPU FP16 bound; None: the fitted one (calibration)
    prefill_efficiency: float | None = None
    # slm.json files (profile sweep, export, `--measure`) of this model: KLD / perplexity per type and KV type
    quality: str | tuple | None = None
    max_kld: float = DEFAULT_MAX_KLD  # the recommendation's quality bound: mean KLD vs f16, nats per token
    extra: dict = field(default_factory=dict)  # free-form notes carried into the record

    def __post_init__(self):
        get_device(self.device)  # one-line error for an unknown key
        if self.context < 1:
            raise SlmError(f"--context must be ≥ 1 (got {self.context})")
        for k in ("min_decode", "min_prefill", "max_memory_gb"):
            if getattr(self, k) is not None and getattr(self, k) <= 0:
                raise SlmError(f"--{k.replace('_', '-')} must be > 0 (got {getattr(self, k)})")
        if self.prefill_efficiency is not None and not 0 < self.prefill_efficiency <= 1:
            raise SlmError("efficiencies must be in (0, 1]: they are fractions of the roofline")
        self.types = parse_types(self.types, have_imatrix=False)
        for t in self.kv_types:
            kv_element_bytes(t)
        self.quality = tuple(self.quality.split(",")) if isinstance(self.quality, str) else tuple(
            self.quality or ())
        for q in self.quality:
            if not Path(q).is_file():
                raise SlmError(f"--quality file {q} not found: pass the slm.json of a profile or export run")
        self.max_kld = check_max_kld(self.max_kld)
        if self.engine != "all":
            self.backend = engine_backend(self.engine)
        if self.measure and self.engine == "mlc":
            raise SlmError("--measure runs candidates with llama.cpp; MLC does not run here: use --engine "
                           "llama.cpp or all")
        get_mode(get_device(self.device).key, self.power_mode)  # one-line error listing the device's modes


def depths(layers: int, grow: bool, prune: bool) -> list[tuple[int, str]]:
    """(depth, how it is reached): the model itself, LLaMA Pro expansions N×P up to 1.5 L (the smallest P per
    depth), and prunes of L/8, L/4, 3L/8 blocks."""
    out = {layers: "as is"}
    if grow:
        for p in range(1, layers + 1):  # P ascending: copies spread over many groups, as LLaMA Pro does
            for n in (g for g in range(1, layers + 1) if layers % g == 0 and p <= layers // g):
                d = layers + n * p
                if d <= 1.5 * layers and d not in out:
                    out[d] = f"expand N={n} P={p}"
    if prune:
        for k in sorted({max(1, layers * f // 8) for f in (1, 2, 3)}):
            if k < layers:
                out.setdefault(layers - k, f"prune K={k}")
    return sorted(out.items())


def compute_bytes(spec: ModelSpec, context: int, flash_attn: bool = True) -> float:
    """llama.cpp's compute buffers for one micro-batch of u = min(UBATCH, context) tokens. The graph allocator
    reuses memory between ops, so the buffer is the larger of two stages, not their sum (f32 = 4 bytes):
      logits stage:    u × (vocab + 2 × hidden) × 4
      attention stage: flash attention (llama.cpp's choice on CUDA; needed by q8_0/q4_0 KV): the f16 mask
                       u × context × 2 + u × (2 × intermediate + 6 × hidden) × 4;
                       without it: scores and f32 mask
                       u × context × (heads + 1) × 4 + u × 2 × intermediate × 4.
    Read off the allocations llama.cpp (CPU backend) logs for three shapes (SmolLM2-135M and two random
    Llamas, vocab 8k–49k) at contexts 512–8192 with flash attention on and off: −4.2 % … +1.7 % over those 24
    cases (the 6 × hidden term was set on one of them, vocab 8k with flash attention at 8192; tests/profiling/
    test_compute_buffers.py holds ±5 %). CUDA's own buffers (e.g. a host-side copy of the inputs) are not
    measured: no CUDA build here."""
    u = min(UBATCH, context)
    ctx = min(context, spec.max_context)
    logits = 4.0 * u * (spec.vocab + 2 * spec.hidden)
    if flash_attn:
        attention = 2.0 * u * ctx + 4.0 * u * (2 * spec.intermediate + 6 * spec.hidden)
    else:
        attention = 4.0 * u * ctx * (spec.heads + 1) + 4.0 * u * 2 * spec.intermediate
    return max(logits, attention)


def load_quality(paths, source: str | Path | None = None) -> dict:
    """{"weights": type → q, "kv": KV type → q, "pairs": (layers, type, KV type) → q}, q = {kld, kld_ci95,
    ppl, source}, from profiles (their slm.json or profile.json: the sweep's rows and its KV-cache rows),
    exports (their slm.json: the validation of each GGUF) and `--measure` records (every candidate measured
    as it would run). A record of another model than `source` is refused, where the records' input hashes can
    tell."""
    out = {"weights": {}, "kv": {}, "pairs": {}}
    for path in ([paths] if isinstance(paths, str | Path) else list(paths or ())):
        _read_quality(Path(path), source, out)
    return out


def _ci(d: dict | None, se_key: str = "kld_se") -> float | None:
    return ci95_se(d.get(se_key)) if d else None


def _read_quality(p: Path, source, out: dict) -> None:
    path = str(p)
    if p.name == "profile.json":
        try:
            res = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SlmError(f"--quality {path} is not valid JSON ({e}): pass the slm.json of a profile or "
                           "export run") from None
        rec = {"kind": "profile", "result": res if isinstance(res, dict) else {}, "inputs": {}, "args": {}}
    else:
        rec = read_record(p)
        if rec is None:
            raise SlmError(f"--quality file {path} not found: pass the slm.json of a profile or export run")
    _check_same_model(rec, p, source)
    res = rec.get("result") or {}
    n = sum(len(v) for v in out.values())
    sweep = res.get("sweep") or {}
    sweep = sweep if isinstance(sweep, dict) else {}
    # a sweep's KLD is against its first type: only a float reference makes it a KLD vs the f16 model
    float_ref = [r for r in sweep.get("rows", []) if r.get("reference") in ("f16", "bf16", "f32")]
    for r in float_ref:
        out["weights"][r["type"]] = {"kld": r.get("kld_vs_ref"), "kld_ci95": r.get("kld_ci95"),
                                     "ppl": r.get("ppl"),
                                     "source": f"sweep in {path} (KLD vs {r.get('reference')})"}
    for r in (sweep.get("kv_quality") or {}).get("rows", []):
        src = (f"KV-cache sweep in {path} (KLD vs the f16 cache, {r['weights']} weights, "
               f"{r['context']}-token windows)")
        out["kv"][r["kv_type"]] = {"kld": r["kld"], "kld_ci95": r.get("kld_ci95"), "ppl": r.get("ppl"),
                                   "source": src}
    for t, v in ((res.get("validation") or {}).get("gguf") or {}).items():
        out["weights"].setdefault(t, {"kld": (v.get("kld") or {}).get("kld_mean"),
                                      "kld_ci95": _ci(v.get("kld")), "ppl": v.get("perplexity"),
                                      "source": f"export validation in {path} (KLD vs the f16 export)"})
    for r in res.get("measured", []):
        out["pairs"][(r["layers"], r["type"], r["kv_type"])] = {
            "kld": r["kld"], "kld_ci95": r.get("kld_ci95"), "ppl": r.get("ppl"),
            "source": f"measured as it runs in {path}"}
    if sum(len(v) for v in out.values()) == n:
        raise SlmError(f"{path} ({rec.get('kind')}) holds no KLD against the f16 model (no export "
                       "validation, no KV-cache rows, no sweep with an f16 first type): pass the slm.json of "
                       "`slm export` or of `slm profile --quant f16,...`")


def candidate_quality(quality: dict, layers: int, how: str, t: str, kvt: str) -> dict | None:
    """The quality of one candidate, and how it is known: measured as it runs (a `--measure` record); the
    weights' own KLD with the f16 cache (the cache the weights were scored with); or the weights' KLD plus the
    cache type's KLD, each measured against its own f16 reference — a first-order sum (KL divergences of two
    small independent perturbations add to first order), the pair not run together. Otherwise None: unknown,
    never guessed and never free. A depth other than the model's own is another model: only `--measure`
    knows it."""
    pair = quality["pairs"].get((layers, t, kvt))
    if pair and pair["kld"] is not None:
        return {**pair, "how": "measured as it runs"}
    w = quality["weights"].get(t) if how == "as is" else None
    if not w or w["kld"] is None:
        return None
    if kvt == "f16":
        return {**w, "how": "measured"}
    kv = quality["kv"].get(kvt)
    if not kv or kv["kld"] is None:
        return None
    ci = [c for c in (w.get("kld_ci95"), kv.get("kld_ci95")) if c]
    return {"kld": w["kld"] + kv["kld"], "kld_ci95": sum(c * c for c in ci) ** 0.5 if ci else None,
            "ppl": None, "source": f"{w['source']} + {kv['source']}",
            "how": "weights + KV, summed"}


def _source_hash(rec: dict) -> str | None:
    """The SHA-256 of the HF model a quality record was made from, where it says: an export's input, or the
    export folder a profile measured."""
    h = (rec.get("inputs") or {}).get("model", {}).get("sha256") if rec.get("kind") == "export" else None
    if h is None and rec.get("kind") == "profile" and rec.get("args", {}).get("model"):
        m = Path(rec["args"]["model"])
        try:
            sub = read_record(m) if m.is_dir() else None
        except SlmError:
            sub = None
        if sub and sub.get("kind") == "export":
            h = (sub.get("inputs") or {}).get("model", {}).get("sha256")
    return h


def _check_same_model(rec: dict, path: Path, source: str | Path | None) -> None:
    have = _source_hash(rec)
    if not have or not source or not Path(source, "config.json").is_file():
        return
    if model_sha256(Path(source)) != have:
        raise SlmError(f"--quality {path} measured another model than {source} (their weights differ): pass "
                       "the profile or export of this model")


def candidates(spec: ModelSpec, args: PlanArgs, source: str | Path | None = None,
               measured: list[dict] | None = None) -> list[dict]:
    """Every depth × type × KV type with size, memory at the context, projected speeds, quality and budget
    checks."""
    dev = get_device(args.device)
    budget = min(dev.usable_bytes, args.max_memory_gb * 1e9) if args.max_memory_gb else dev.usable_bytes
    quality = load_quality(args.quality, source)
    for r in measured or []:
        quality["pairs"][(r["layers"], r["type"], r["kv_type"])] = {
            **r, "source": f"measured as it runs (--measure: {r['scoring']})"}
    rows, mlc = [], args.backend == "MLC"
    for d, how in depths(spec.layers, args.grow, args.prune):
        s = dataclasses.replace(spec, layers=d)
        for t in (MLC_TYPES if mlc else args.types):
            f = ({"tensor_bytes": s.params * MLC_TYPES[t] / 8, "params": s.params,
                  "bits_per_weight": MLC_TYPES[t], "fallbacks": [], "holds": True} if mlc
                 else fallbacks_for(s, t))
            for kvt in (("f16",) if mlc else args.kv_types):
                rows.append(_row(s, how, t, f, kvt, args, dev, budget,
                                 None if mlc else candidate_quality(quality, d, how, t, kvt)))
    rows.sort(key=rank_key(args.max_kld))
    mark_pareto(rows)
    return rows


def _row(s: ModelSpec, how: str, t: str, f: dict, kvt: str, args: PlanArgs, dev, budget: float, q) -> dict:
    per_tok = s.kv_bytes_per_token(kv_element_bytes(kvt))
    weights, kv, comp = f["tensor_bytes"], per_tok * args.context, compute_bytes(s, args.context)
    decode = project_decode(dev, streamed_weight_bytes(s, weights), per_tok, args.context,
                            args.backend, args.power_mode)["tok_s"]
    prefill = prefill_bound(dev.fp16_tflops * 1e12, s, args.context) * (args.prefill_efficiency
                                                                         or fit_prefill().efficiency)
    prefill *= mode_terms(dev.key, args.power_mode)["prefill_scale"]
    fits = weights + kv + comp <= budget
    ok = fits and decode >= (args.min_decode or 0) and prefill >= (args.min_prefill or 0)
    return {"layers": s.layers, "variant": how, "type": t, "kv_type": kvt, "params": f["params"],
            "file_bytes": weights, "bits_per_weight": f["bits_per_weight"], "fallbacks": len(f["fallbacks"]),
            "holds": f["holds"] or t in MLC_TYPES or get_type(t).is_float, "weights_bytes": weights,
            "kv_bytes": kv,
            "compute_bytes": comp, "memory_bytes": weights + kv + comp, "budget_bytes": budget, "fits": fits,
            "decode_tok_s": decode, "prefill_tok_s": prefill, "meets_budget": ok,
            # time to first token of a prompt as long as the context: prompt / prefill + one decode step
            "ttft_s": projected_ttft_s(args.context, prefill, decode),
            "kld": q["kld"] if q else None, "kld_ci95": q.get("kld_ci95") if q else None,
            "ppl": q["ppl"] if q else None, "quality_how": q["how"] if q else "unknown",
            "quality_source": q["source"] if q else "unknown (not measured: --measure or --quality)"}


def _check_context(spec: ModelSpec, context: int) -> None:
    """A context past max_position_embeddings is outside what the model was trained for (and what llama.cpp
    sizes its buffers by): planning it would say every candidate fits at a context none of them can use."""
    if context > spec.max_context:
        raise SlmError(f"--context {context:,} is above the model's maximum context {spec.max_context:,} "
                       f"(max_position_embeddings): plan at --context ≤ {spec.max_context:,}, or extend the "
                       "context (rope scaling in config.json) before planning")


def plan(spec: ModelSpec, args: PlanArgs, model: str = "", measured: list[dict] | None = None) -> dict:
    """The whole answer: device, assumptions, fallback facts for this shape, ranked candidates; with
    `engine="all"`, llama.cpp's plan carrying every engine's answer side by side (`engines`)."""
    _check_context(spec, args.context)
    if args.engine == "all":
        each = {e: _plan(spec, dataclasses.replace(args, engine=e), model, measured) for e in ENGINES}
        res = each["llama.cpp"]
        res["engines"] = {e: {k: r[k] for k in ("answer", "recommended", "how")}
                          | {"fastest": max((c for c in r["candidates"] if c["meets_budget"]), default=None,
                                          key=lambda c: c["decode_tok_s"])}
                          for e, r in each.items()}
        res["answer"] = " ".join(f"[{ENGINES[e]}] {r['answer']}" for e, r in each.items())
        return res
    return _plan(spec, args, model, measured)


def _plan(spec: ModelSpec, args: PlanArgs, model: str, measured: list[dict] | None = None) -> dict:
    dev = get_device(args.device)
    rows = candidates(spec, args, model or None, measured)

    fit, backend, caveat = calibration_for(args.backend, dev.key)
    calib = fit.label(backend) + (f" ({caveat})" if caveat else "")
    choice = choose(rows, args.max_kld)

    return {"model": model, "spec": dataclasses.asdict(spec), "device": dev.to_dict(),
            "context": args.context, "args": {k: v for k, v in dataclasses.asdict(args).items()},
            "how": {"speed": _speed_how(args, fit, backend, calib, spec),
                    "calibration": calib, "decode_expected_error": fit.held_out_error,
                    "memory": "GGUF tensor bytes as llama.cpp writes this shape (fallbacks included) + KV "
                              f"cache at the context + compute buffers for a {UBATCH}-token micro-batch with "
                              "flash attention (the estimate is within ±5 % of llama.cpp's CPU allocations; "
                              "CUDA's not checked); against the device's memory less "
                              f"{dev.memory_gib - dev.usable_bytes / GIB:.0f} GiB for the OS",
                    "quality": _quality_how(args, rows), "ranking": ranking(args.max_kld),
                    "power_mode": mode_label(dev.key, args.power_mode)},
            "answer": choice_sentence(choice, dev.name, args.context, fit.held_out_error,
                                      "MLC does not run here, so its formats' quality is not measured"
                                      if args.backend == "MLC" else ""),
            "recommended": choice["recommended"], "rule": choice["rule"], "runner_up": choice["runner_up"],
            "fallback_warning": fallback_warning(spec, args.types), "types_that_hold": types_that_hold(spec),
            "measured": measured or [], "candidates": rows}


def _quality_how(args: PlanArgs, rows: list[dict]) -> str:
    n = sum(r["kld"] is not None for r in rows)
    src = ", ".join(args.quality) if args.quality else "no record passed (--quality, --measure)"
    return (f"KLD vs the f16 model, from {src}: {n} of {len(rows)} candidates measured, the rest unknown "
            "(never ranked as free, never recommended). A quantized KV cache's KLD is measured apart, with "
            "flash attention (llama.cpp needs it for a quantized V cache), and added to the weights' KLD "
            "where the pair was not run together (the quality column says which)")


def _speed_how(args: PlanArgs, fit, backend: str, calib: str, spec: ModelSpec) -> str:
    """How the speed columns were obtained, in sentences a reader can follow."""
    ttft = (f" TTFT of a {args.context}-token prompt: the prompt at the projected prefill rate plus one "
            "decode step (so it carries both projections' errors).")
    return _rates_how(args, fit, backend, calib, spec) + ttft


def _rates_how(args: PlanArgs, fit, backend: str, calib: str, spec: ModelSpec) -> str:
    decode = (f"{HOW}. Decode tok/s at depth {args.context}: (weights streamed per token — all but an untied "
              f"input embedding — + KV cache) / ({fit.efficiency:.2f} × device bandwidth) + "
              f"{fit.overhead_s[backend] * 1e3:.1f} ms per token; {calib.removeprefix('projected: ')}.")
    if args.prefill_efficiency:
        return decode + (f" Prefill tok/s of a {args.context}-token prompt: {args.prefill_efficiency} "
                         "(given) × the GPU's FP16 throughput / FLOPs per token.")
    pf = fit_prefill()
    small = (f" This model is smaller than any published point ({pf.params_range[0] / 1e9:.1f}B), and kernel "
             "overheads, not FLOPs, may bound its prompt: read prefill as an upper estimate."
             if spec.params < 0.9 * pf.params_range[0] else "")
    return decode + (f" Prefill tok/s of a {args.context}-token prompt: {pf.efficiency:.2f} × the GPU's FP16 "
                     "throughput (GPU sparse INT8 TOPS / 4) / FLOPs per token; "
                     f"{pf.label.removeprefix('projected: ')}."
                     + small)


def _measured(source, spec: ModelSpec, args: PlanArgs) -> list[dict] | None:
    if not args.measure:
        return None
    kv = args.kv_types
    return measure(source, spec.layers, depths(spec.layers, False, args.prune), args.types, kv, args.threads)


def run_plan(source: str | Path, args: PlanArgs, out: Path | None = None, force: bool = False) -> dict:
    """`slm plan`: the plan of a model folder, GGUF or config.json; with `out`, written there (checked and
    locked before the work, never over the source)."""

    spec = load_spec(source)
    if args.measure:
        check_weights(source)  # before the output is locked or anything is measured
    if out is None:
        return plan(spec, args, str(source), _measured(source, spec, args))
    with guard_output(out, [source, *args.quality], force):
        result = plan(spec, args, str(source), _measured(source, spec, args))

        write_plan(out, result, force, (source,))
    return result
