"""`--onnx int4`: try several int4 recipes, score each by KLD and speed, keep the one the rule picks.

Candidates come from two places: onnxruntime-genai's model builder (`--extra_options`: `algo_config`,
`matmul_mixed_precision`, `block_size`; builder.py's help) and onnxruntime's `MatMulNBitsQuantizer` run on the
builder's fp32 folder (RTN, HQQ, GPTQ; onnx_ortq.py). Each is scored with the one scorer (slm/score.py, mode
`all`) as KL(P_fp32-HF ‖ P_candidate) on the first part of the validation text; GPTQ calibrates on the part
after it, never on the tokens that are scored. Each is also timed on this machine (decode and prefill tok/s,
onnx_speed.py: the profiler's protocol, short). Among those whose weights (model.onnx + its data) are no
larger than a GGUF q4_k_m of the same shape (slm.gguf_mix.fallbacks_for, no quantizing needed), `--int4-rule`
picks (RULES):

    balanced (default)  the lowest KLD among candidates whose decode is within 10 % of the fastest one's
                        (a candidate counts as within when its 95 % interval reaches the line: a slowdown
                        inside the timing noise excludes nothing)
    quality             the lowest KLD, whatever its speed
    speed               the fastest decode (the lower KLD between two whose intervals overlap)

    --onnx int4          the default list (DEFAULT_SEARCH, ~3 min on the 135M model, 2 cores)
    --onnx int4:all      every candidate
    --onnx int4:NAME     only NAME (not scored here: validation scores it)
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slm.errors import SlmError
from slm.gguf_mix import fallbacks_for
from slm.score import kld, perplexity, score

from . import onnx_export
from . import runtimes as rt
from .onnx_ortq import quantize_folder
from .onnx_speed import SpeedArgs, measure_speed

RULES = ("balanced", "quality", "speed")
# balanced: "as fast as the fastest" means decode ≥ this share of the fastest candidate's (the issue's
# target: the kept int4 recipe decodes at ≥ 0.9× the builder default)
BALANCED_SHARE = 0.9


def check_rule(rule: str) -> str:
    r = (rule or "").strip().lower()
    if r not in RULES:
        raise SlmError(f"unknown --int4-rule {rule!r}: choose one of {', '.join(RULES)} (balanced: lowest "
                       "KLD within 10 % of the fastest decode; quality: lowest KLD; speed: fastest decode)")
    return r


@dataclass(frozen=True)
class Candidate:
    """One int4 recipe."""

    # "builder" (onnxruntime-genai --extra_options) or "ort" (MatMulNBitsQuantizer on the fp32 folder)
    tool: str
    # builder: its extra_options; ort: algo, block_size, symmetric
    options: dict = field(default_factory=dict)
    note: str = ""  # one line for the report


CANDIDATES: dict[str, Candidate] = {
    "default": Candidate("builder", {}, "builder default: RTN symmetric, block 32, accuracy_level 4"),
    "k_quant": Candidate("builder", {"algo_config": "k_quant"},
                         "builder k-quant (llama.cpp-style scale search)"),
    "default_b128": Candidate("builder", {"block_size": 128},
                              "builder RTN with blocks of 128 (smaller, coarser)"),
    "rtn_last": Candidate("builder", {"algo_config": "rtn", "matmul_mixed_precision": "last_matmul:int8"},
                          "builder RTN, LM head int8"),
    "k_quant_last": Candidate("builder",
                              {"algo_config": "k_quant", "matmul_mixed_precision": "last_matmul:int8"},
                              "builder k-quant, LM head int8"),
    "k_quant_mixed": Candidate("builder", {"algo_config": "k_quant",
                                           "matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8"},
                               "builder k-quant, LM head and llama.cpp's sensitive layers int8"),
    "rtn": Candidate("ort", {"algo": "rtn", "block_size": 32, "symmetric": False},
                     "onnxruntime RTN, asymmetric, block 32"),
    "hqq": Candidate("ort", {"algo": "hqq", "block_size": 32},
                     "onnxruntime HQQ (Badri & Shaji 2023), block 32"),
    "hqq_b64": Candidate("ort", {"algo": "hqq", "block_size": 64}, "onnxruntime HQQ, block 64"),
    "hqq_u8": Candidate("ort", {"algo": "hqq", "block_size": 32, "uint8_zp": True},
                        "onnxruntime HQQ, block 32, zero points rounded to uint8 (the int4 kernel's layout)"),
    "gptq": Candidate("ort", {"algo": "gptq", "block_size": 32, "symmetric": False},
                      "onnxruntime GPTQ (Frantar et al. 2022), asymmetric, block 32, calibrated"),
}
# Measured on SmolLM2-135M (2 shared cores, KLD vs fp32 HF on the first 512 tokens of GPL-3; build + score s):
# default 0.453 (11.5+4.8), k_quant 0.480 (41+3), default_b128 0.768 (17+4), rtn_last 0.565 (13+3),
# k_quant_last 0.364 (39+4), k_quant_mixed 0.274 but 108 MiB of weights > the bound (38+5), rtn 0.451 (15+2,
# incl. the 7 s fp32 build), hqq 0.082 (6.5+1.8), hqq_b64 0.456 (13.5+2.5); gptq 0.464 (599+5 with 2 × 512
# calibration tokens: a full fp32 pass per distinct MatMul input per window) — GPTQ is in `int4:all` only.
# This list: ~150 s + the reference.
# Why hqq decodes 10-15× slower on CPU: its MatMulNBits nodes carry float zero points, and onnxruntime's CPU
# kernel runs its int4 (MLAS SQNBit) path only for uint8 ones — with float ones it dequantises the weights
# first. accuracy_level 4 alone does not help. Measured side by side on SmolLM2-135M, 2 threads, a loaded
# host (decode tok/s, mean of 3 × 32 steps): builder default 17.0 ± 2.2, hqq_u8 14.0 ± 5.9, hqq 1.05 ± 0.11;
# but hqq_u8's rounded zero points give back HQQ's gain (KLD 0.460 vs hqq's 0.084, the default's 0.452).
# That gain is the source's grid, not HQQ's: the bundled model is dequantized Q4_1, which float zero points at
# block 32 reproduce (source_grid). Dithered off the grid (benchmarks/bench_onnx_int4.py --dither): hqq 0.585,
# rtn 0.602, k_quant_last 0.551, default 0.943. So hqq stays in the list (a grid-sourced model is common: GGUF
# imports), the rule weighs its speed, and hqq_u8 is in `int4:all` only.
DEFAULT_SEARCH = ("default", "k_quant_last", "k_quant_mixed", "rtn", "hqq", "hqq_b64")
SCORE_TOKENS = 512  # at most this many tokens scored; the rest of the text calibrates GPTQ
# GPTQ calibration windows of n_ctx tokens (each costs one fp32 pass per distinct MatMul input)
CALIB_WINDOWS = 2


def parse_int4(item: str) -> str:
    """'int4' → 'search', 'int4:all' → 'all', 'int4:NAME' → NAME; SlmError for an unknown name (before any
    work)."""
    name = item.split(":", 1)[1].strip().lower() if ":" in item else "search"
    if name not in ("search", "all") and name not in CANDIDATES:
        raise SlmError(f"unknown ONNX int4 candidate {name!r}: choose all or one of {', '.join(CANDIDATES)}")
    return name


def names_for(choice: str) -> list[str]:
    return list(DEFAULT_SEARCH if choice == "search" else CANDIDATES if choice == "all" else [choice])


def size_bound(spec) -> int:
    """Tensor bytes of a GGUF q4_k_m of this shape, fallbacks included (slm.gguf_mix, computed, not
    quantized)."""

    return int(fallbacks_for(spec, "q4_k_m")["tensor_bytes"])


def weight_bytes(folder: Path) -> int:
    """model.onnx and its external data: what the candidate's weights cost (tokenizer files excluded)."""
    return sum(p.stat().st_size for p in folder.glob("model.onnx*") if p.is_file())


@dataclass
class Inputs:
    """What every candidate is built from and scored on."""

    model_dir: Path  # HF checkpoint
    ep: str  # execution provider
    work: Path  # scratch folder (candidates, fp32 build, builder cache)
    logs: Path  # builder logs
    score_ids: list[int]  # token ids scored (KLD vs the fp32 HF model)
    calibration: list[list[int]]  # GPTQ windows, disjoint from score_ids
    rule: str = "balanced"  # which candidate is kept (RULES)
    speed: SpeedArgs = field(default_factory=SpeedArgs)  # how each candidate is timed


def build(name: str, inp: Inputs) -> Path:
    """Build candidate `name` into work/int4-NAME."""
    c, out = CANDIDATES[name], inp.work / f"int4-{name}"
    cache = inp.work / "onnx-cache"
    if c.tool == "builder":
        return onnx_export.build_onnx(inp.model_dir, out, "int4", inp.ep, cache,
                                      inp.logs / f"onnx-int4-{name}.log", extra=c.options)
    fp32 = inp.work / "fp32"
    if not (fp32 / "genai_config.json").is_file():
        onnx_export.build_onnx(inp.model_dir, fp32, "fp32", inp.ep, cache,
                               inp.logs / "onnx-fp32-for-int4.log")
    o = c.options
    if o["algo"] == "gptq" and not inp.calibration:
        raise RuntimeError("no calibration text left after the scored tokens: pass a longer --eval-text")

    return quantize_folder(fp32, out, o["algo"], o["block_size"], o.get("symmetric", False),
                           4 if inp.ep == "cpu" else None, inp.calibration,
                           uint8_zero_points=o.get("uint8_zp", False))


def score_candidate(folder: Path, ref, inp: Inputs, scoring) -> dict:
    """KLD of the candidate against the fp32 HF reference on the scored tokens (slm/score.py)."""
    m = rt.open_onnx(folder)
    got = score(lambda w, m=m: rt.onnx_logits(m, w), inp.score_ids, scoring)
    del m
    return {**kld(ref, got, scoring), "perplexity": perplexity(got, scoring)["perplexity"]}


def reference_scores(model_dir: Path, ids: list[int], scoring):
    """The fp32 HF model's scores on `ids`: what every candidate's KLD is taken against."""
    from slm.io import load_model  # torch + transformers: only when a reference is scored

    model = load_model(model_dir, "float32").eval()
    return score(lambda w: rt.hf_logits(model, w), ids, scoring)


def _row(name: str, folder: Path | None, built_s: float, scored: dict | None, bound: int,
         err: str = "") -> dict:
    c = CANDIDATES[name]
    row = {"name": name, "tool": c.tool, "options": dict(c.options), "note": c.note,
           "build_s": round(built_s, 1)}
    if folder is not None:
        row.update(size_bytes=onnx_export.dir_size(folder), weight_bytes=weight_bytes(folder))
        row["fits"] = row["weight_bytes"] <= bound
    if scored:
        row.update(kld=scored["kld_mean"], kld_p99=scored["kld_p99"], top1=scored["top1_agree"],
                   perplexity=scored["perplexity"], score_s=round(scored["seconds"], 1))
        for k in ("decode", "prefill"):
            if k in scored:
                row[f"{k}_tok_s"], row[f"{k}_ci95"] = scored[k]["tok_s"], scored[k]["ci95"]
    if err:
        row["error"] = err
    return row


def pick(rows: list[dict], rule: str = "balanced") -> str:
    """The candidate `rule` keeps among scored candidates that fit the bound (none fits: the smallest scored
    one). Candidates whose speed could not be measured are weighed on KLD alone by `quality` only."""
    scored = [r for r in rows if "kld" in r]
    if not scored:
        raise SlmError("no ONNX int4 candidate could be built and scored: " +
                       "; ".join(f"{r['name']}: {r.get('error', '?')}" for r in rows))
    fit = [r for r in scored if r["fits"]]
    if not fit:
        return min(scored, key=lambda r: r["weight_bytes"])["name"]
    timed = [r for r in fit if r.get("decode_tok_s")]
    if rule == "quality" or not timed:
        return min(fit, key=lambda r: r["kld"])["name"]
    top = max(timed, key=lambda r: r["decode_tok_s"])
    if rule == "speed":
        # the lowest KLD among those not measurably slower than the fastest (intervals overlap)
        lo = top["decode_tok_s"] - (top.get("decode_ci95") or 0)
        near = [r for r in timed if r["decode_tok_s"] + (r.get("decode_ci95") or 0) >= lo]
    else:
        line = BALANCED_SHARE * top["decode_tok_s"]
        near = [r for r in timed if r["decode_tok_s"] + (r.get("decode_ci95") or 0) >= line]
    return min(near, key=lambda r: r["kld"])["name"]


def rule_text(rule: str) -> str:
    """The rule in words, for the report."""
    return {"balanced": f"lowest KLD among the candidates within q4_k_m's size whose decode is within "
                        f"{100 * (1 - BALANCED_SHARE):.0f} % of the fastest one's (its 95 % interval "
                        "reaching the line)",
            "quality": "lowest KLD among the candidates within q4_k_m's size, whatever their speed",
            "speed": "fastest decode among the candidates within q4_k_m's size (lowest KLD among those whose "
                     "interval overlaps the fastest's)"}[rule]


def search(choice: str, inp: Inputs, spec, scoring, dest: Path) -> dict:
    """Build (and, for more than one, score) the candidates of `choice`; move the kept one to `dest`."""
    names, bound = names_for(choice), size_bound(spec)
    ref = reference_scores(inp.model_dir, inp.score_ids, scoring) if len(names) > 1 else None
    rows = []
    for name in names:
        t, folder, scored, err = time.time(), None, None, ""
        try:
            folder = build(name, inp)
        except RuntimeError as e:  # one recipe failing is a finding, not the end of the export
            err = str(e).splitlines()[0][:300]
        built = time.time() - t
        if folder is not None and ref is not None:
            t = time.time()
            scored = {**score_candidate(folder, ref, inp, scoring), "seconds": time.time() - t}
            try:
                scored.update(measure_speed(folder, inp.speed))
            except RuntimeError as e:  # a graph that scores but cannot be timed is kept on KLD alone
                err = f"speed not measured: {str(e).splitlines()[0][:200]}"
        rows.append(_row(name, folder, built, scored, bound, err))
    kept = pick(rows, inp.rule) if ref is not None else names[0]
    if ref is None and "error" in rows[0]:
        raise SlmError(f"ONNX int4 {kept} failed: {rows[0]['error']}: pick another recipe (--onnx int4) or "
                       "fix the input")
    shutil.move(str(inp.work / f"int4-{kept}"), str(dest))
    for name in names:
        shutil.rmtree(inp.work / f"int4-{name}", ignore_errors=True)
    return {"kept": kept, "settings": {"tool": CANDIDATES[kept].tool, **CANDIDATES[kept].options},
            "note": CANDIDATES[kept].note, "choice": choice, "candidates": rows, "bound_bytes": bound,
            "bound_from": "tensor bytes of a GGUF q4_k_m of this shape (slm.gguf_mix.fallbacks_for)",
            "fits": next(r for r in rows if r["name"] == kept).get("fits"),
            "reference": "fp32 HF model", "scoring": scoring.to_dict() if ref is not None else None,
            "rule": inp.rule, "rule_text": rule_text(inp.rule),
            "speed_protocol": {**asdict(inp.speed), "how": "measured here"} if ref is not None else None,
            "score_tokens": len(inp.score_ids), "calibration_tokens": sum(map(len, inp.calibration)),
            "source_grid": source_grid(inp.model_dir)}


def source_grid(model_dir: Path, block: int = 32, tensors: int = 8, blocks: int = 4096) -> dict:
    """How many blocks of `block` weights hold at most 16 distinct values — a checkpoint dequantized from a
    4-bit GGUF (the bundled SmolLM2 is Q4_1: w = d·q + m per block of 32) does in every block; one trained in
    bf16 in almost none (`on_grid`: over half the blocks sampled; the bundled model's Q8_0 embedding is
    not). On such a source, recipes with float zero points at the same block size (HQQ)
    reproduce the grid nearly exactly and their KLD says little about a bf16-trained model. Read from the
    first `tensors` 2-D weights of the safetensors, `blocks` blocks each. Hand-written: no library checks
    this."""
    from safetensors import safe_open  # safetensors: only when a search runs

    share, n = [], 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                if n >= tensors:
                    break
                t = st.get_slice(name)
                shape = t.get_shape()
                if len(shape) != 2 or shape[1] % block:
                    continue
                w = st.get_tensor(name).float().reshape(-1, block)[:blocks]
                distinct = (w.sort(-1).values.diff(dim=-1) != 0).sum(-1) + 1
                share.append(float((distinct <= 16).float().mean()))
                n += 1
    frac = sum(share) / len(share) if share else 0.0
    return {"share_on_grid": frac, "tensors": n, "block": block, "on_grid": frac > 0.5,
            "how": f"blocks of {block} with ≤ 16 distinct values, first {blocks} blocks of {n} 2-D weights"}


def split_text(ids: list[int], n_ctx: int) -> tuple[list[int], list[list[int]]]:
    """Scored ids (the first min(SCORE_TOKENS, 2/3) of the text) and the GPTQ calibration windows after
    them."""
    n = min(SCORE_TOKENS, max(2, len(ids) * 2 // 3))
    rest = ids[n:]
    windows = [rest[i:i + n_ctx] for i in range(0, len(rest), n_ctx)][:CALIB_WINDOWS]
    return ids[:n], [w for w in windows if len(w) >= 16]
