"""`slm export`: GGUF files in any llama.cpp type and ONNX folders, validated against the source model.

    export(model_dir, out_dir, ExportArgs(gguf=["q8_0", "q6_k", "q4_k_m"], onnx=["int4"]))

Order of work: check everything the user gave (types, architecture, tokenizer pre-tokenizer, output
folder, free disk) before writing a byte; then, inside a temp folder that only becomes `out_dir` on success,
write one F32 (or F16) intermediate GGUF streamed from the checkpoint, quantize it to each type with
llama.cpp, build the ONNX folders, validate, and write slm.json + report.html.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slm.errors import SlmError
from slm.figure import Figure, analytic, from_file, setting
from slm.gguf import FLOAT_TYPES, QUANT_TYPES, parse_types, size_upper_bound
from slm.gguf_mix import fallback_warning
from slm.guard import atomic_dir, check_output
from slm.io import read_config
from slm.record import write_record
from slm.score import Scoring
from slm.spec import ModelSpec, spec_from_config
from slm.stats import ci95_se

from . import gguf_arch, gguf_write, onnx_export, onnx_search
from .imatrix import compute_imatrix
from .onnx_speed import SpeedArgs
from .quantize import inspect_gguf, quantize
from .report import write_report
from .runtimes import HELD_OUT_TEXT
from .validate import (
    text_ids,  # transformers' tokenizer: only when ONNX int4 is asked for
    validate_exports,
)

DISK_MARGIN = 1.1


@dataclass
class ExportArgs:
    """What to export and how to check it."""

    # GGUF types (f32, f16, bf16, q8_0, q6_k, q4_k_m, …)
    gguf: list[str] = field(default_factory=lambda: ["q8_0"])
    # ONNX precisions: int4 (int4:all, int4:NAME), int8, fp16, fp32
    onnx: list[str] = field(default_factory=list)
    int4: str = "search"  # int4 recipes: search (the default list), all, or one name (onnx_search.CANDIDATES)
    int4_rule: str = "balanced"  # which searched int4 recipe is kept: balanced, quality, speed (onnx_search)
    ep: str = "cpu"  # ONNX execution provider the graph is built for: cpu or cuda
    validate: bool = True  # compare every artifact with the HF model (logits, perplexity, KLD, generations)
    imatrix: str | None = None  # calibration text file → importance matrix for the quantizer
    pre_tokenizer: str | None = None  # override llama.cpp's pre-tokenizer name when detection fails
    eval_text: str | None = None  # held-out text file for perplexity/KLD (default: a built-in passage)
    n_ctx: int = 256  # window for perplexity / KLD, in tokens
    name: str | None = None  # file name stem (default: the model folder's name)
    threads: int | None = None  # CPU threads for llama.cpp (quantizing, validating); default all cores
    force: bool = False  # replace an existing output folder

    def __post_init__(self):
        self.gguf = list(parse_types(self.gguf, have_imatrix=bool(self.imatrix)))
        if isinstance(self.onnx, str):
            self.onnx = [t for t in self.onnx.split(",") if t.strip()]
        if not self.gguf and not self.onnx:
            raise SlmError("nothing to export: pass --gguf TYPES and/or --onnx PRECISIONS")
        for item in self.onnx:  # "int4:NAME" names the int4 recipe; refused here, before any work
            if item.strip().lower().startswith("int4:"):
                self.int4 = onnx_search.parse_int4(item.strip())
        self.int4 = onnx_search.parse_int4(f"int4:{self.int4}")
        self.int4_rule = onnx_search.check_rule(self.int4_rule)
        self.onnx = onnx_export.check_onnx([t.split(":", 1)[0] for t in self.onnx], self.ep)
        if self.threads is not None and self.threads < 1:
            raise SlmError(f"threads must be at least 1, got {self.threads}")
        if self.n_ctx < 16:
            raise SlmError(f"n_ctx {self.n_ctx} is too small for a perplexity window: use at least 16")
        for label, p in (("--imatrix", self.imatrix), ("--eval-text", self.eval_text)):
            if p and not Path(p).is_file():
                raise SlmError(f"{label} file {p} not found: pass a UTF-8 text file")


def default_out(model_dir: Path | str) -> Path:
    """A folder beside the model, named after it."""
    p = Path(model_dir).resolve()
    return p.with_name(f"{p.name}-export")


def estimate_bytes(n_params: int, args: ExportArgs, source_f16: bool) -> int:
    """Peak disk use of the run: every output, plus the intermediate GGUF and an f16 reference if needed."""
    total = sum(size_upper_bound(n_params, t) for t in args.gguf)
    total += sum(n_params * onnx_export.BYTES_PER_WEIGHT[p] for p in args.onnx)
    inter = "f16" if source_f16 else "f32"
    if any(t in QUANT_TYPES for t in args.gguf) and inter not in args.gguf:
        total += size_upper_bound(n_params, inter)
    if args.validate and args.gguf and "f16" not in args.gguf:
        total += n_params * 2
    return int(total * DISK_MARGIN)


def check_disk(out: Path, need: int) -> None:
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < need:
        raise SlmError(f"not enough disk for the export: needs about {need / 1e9:.2f} GB, {parent} has "
                       f"{free / 1e9:.2f} GB free; free space, choose another -o, or export fewer types")


@dataclass
class Prepared:
    """What one export run works from, settled before any write."""

    model_dir: Path  # the HF checkpoint
    out: Path  # the output folder
    name: str  # file name stem
    arch: str  # GGUF architecture
    spec: ModelSpec  # the checkpoint's shape
    vocab: dict | None  # the GGUF tokenizer section (None: no tokenizer, or no GGUF asked for)
    text: str  # held-out text for perplexity / KLD
    imatrix: dict | None  # GGUF tensor name → mean x² per input column, when --imatrix was given
    exact_ctx: int | None = None  # context within which the GGUF computes what HF does (None: all of it)


def prepare(model_dir: Path, out: Path, args: ExportArgs) -> Prepared:
    """Every check before any write: architecture, output folder, tokenizer, disk; then the importance
    matrix."""
    config = read_config(model_dir)
    aplan = gguf_arch.plan_arch(config)
    spec = spec_from_config(config)
    check_output(out, args.force, [model_dir])
    if aplan.warning() and args.gguf:  # said before any work: where llama.cpp stops computing what HF does
        print(aplan.warning(), file=sys.stderr)
    warning = fallback_warning(spec, args.gguf)  # said before any work: what the files will really hold
    if warning:
        print(warning, file=sys.stderr)
    tokenizer = gguf_write.has_tokenizer(model_dir)
    vocab = (gguf_write.load_vocab(model_dir, spec.vocab, args.pre_tokenizer) if args.gguf and tokenizer
             else None)
    if args.imatrix and not tokenizer:
        raise SlmError(f"{model_dir} has no tokenizer to read the --imatrix calibration text with: "
                       "add one or drop --imatrix")
    if args.onnx and not tokenizer:
        raise SlmError(f"{model_dir} has no tokenizer: onnxruntime-genai needs tokenizer.json beside the "
                       "weights")
    check_disk(out, estimate_bytes(spec.params, args, spec.dtype == "float16"))
    text = Path(args.eval_text).read_text() if args.eval_text else HELD_OUT_TEXT
    imatrix = None
    if args.imatrix:

        imatrix = compute_imatrix(model_dir, Path(args.imatrix).read_text(), aplan.arch)
    return Prepared(model_dir, out, args.name or model_dir.resolve().name, aplan.arch, spec, vocab, text,
                    imatrix, aplan.exact_ctx if args.gguf else None)


def _timed(timings: dict, key: str, fn, *a, **kw):
    s = time.time()
    r = fn(*a, **kw)
    timings[key] = time.time() - s
    return r


def write_ggufs(p: Prepared, args: ExportArgs, tmp: Path, work: Path, timings: dict) -> tuple[dict, list]:
    """Floats written directly, the rest quantized from one intermediate (f16 for an f16 source, else f32),
    plus the f16 reference validation needs; returns type → path and the file entries of the result."""
    inter = "f16" if p.spec.dtype == "float16" else "f32"
    quant_types = [t for t in args.gguf if t in QUANT_TYPES]
    floats = [t for t in args.gguf if t in FLOAT_TYPES]
    need_f16_ref = args.validate and bool(args.gguf)
    paths: dict[str, Path] = {}
    for t in dict.fromkeys(floats + ([inter] if quant_types else []) + (["f16"] if need_f16_ref else [])):
        paths[t] = (tmp if t in floats else work) / f"{p.name}-{t}.gguf"
        _timed(timings, f"write_{t}", gguf_write.write_gguf, p.model_dir, paths[t], t, name=p.name,
               vocab=p.vocab)
    logs: dict[str, str] = {}
    for t in quant_types:
        paths[t] = tmp / f"{p.name}-{t}.gguf"
        logs[t] = _timed(timings, f"quantize_{t}", quantize, paths[inter], paths[t], t, imatrix=p.imatrix,
                         threads=args.threads)
        (tmp / "logs" / f"quantize-{t}.log").write_text(logs[t])
    files = []
    for t in args.gguf:
        info = inspect_gguf(paths[t], t, logs.get(t))
        files.append({"format": "gguf", "type": t, "path": paths[t].name,
                      "size_bytes": paths[t].stat().st_size, "bits_per_weight": info["bits_per_weight"],
                      "main_type": info["main_type"], "by_type": info["by_type"],
                      "fallbacks": info["fallbacks"], "mixed": info["mixed"]})
    return paths, files


def _int4_inputs(p: Prepared, args: ExportArgs, tmp: Path, work: Path) -> onnx_search.Inputs:
    """The scored tokens and the GPTQ calibration windows, both from the validation text and disjoint."""

    n_ctx = min(args.n_ctx, p.spec.max_context)
    ids = text_ids(p.model_dir, p.text, p.spec.vocab, n_ctx)
    score_ids, calibration = onnx_search.split_text(ids, n_ctx)
    return onnx_search.Inputs(p.model_dir.resolve(), args.ep, work / "int4", tmp / "logs", score_ids,
                              calibration, args.int4_rule, SpeedArgs(threads=args.threads))


def write_onnx(p: Prepared, args: ExportArgs, tmp: Path, work: Path,
               timings: dict) -> tuple[dict, list, dict | None]:
    """One onnxruntime-genai folder per precision (int4: the search's kept candidate); returns precision →
    folder, the file entries and the int4 search record."""

    dirs, files, int4 = {}, [], None
    for prec in args.onnx:
        d = dirs[prec] = tmp / f"onnx-{prec}"
        if prec == "int4":
            inp = _int4_inputs(p, args, tmp, work)
            inp.work.mkdir(parents=True, exist_ok=True)
            scoring = Scoring("all", min(args.n_ctx, p.spec.max_context))
            int4 = _timed(timings, "onnx_int4", onnx_search.search, args.int4, inp, p.spec, scoring, d)
        else:
            _timed(timings, f"onnx_{prec}", onnx_export.build_onnx, p.model_dir.resolve(), d, prec, args.ep,
                   work / "onnx-cache", tmp / "logs" / f"onnx-{prec}.log")
        size = onnx_export.dir_size(d)
        files.append({"format": "onnx", "type": prec, "path": d.name, "size_bytes": size,
                      "bits_per_weight": 8 * size / p.spec.params, "main_type": prec, "fallbacks": [],
                      "mixed": []})
        if prec == "int4":
            files[-1]["settings"] = {"candidate": int4["kept"], **int4["settings"]}
    return dirs, files, int4


def export(model_dir: Path | str, out_dir: Path | str | None = None, args: ExportArgs | None = None) -> dict:
    """Write out_dir with `<name>-<type>.gguf`, `onnx-<precision>/`, slm.json and report.html; return the
    result."""
    args = args or ExportArgs()
    model_dir = Path(model_dir)
    t0 = time.time()
    p = prepare(model_dir, Path(out_dir) if out_dir else default_out(model_dir), args)
    timings: dict[str, float] = {}
    with atomic_dir(p.out, args.force, [model_dir]) as tmp:
        work = tmp / ".work"
        work.mkdir()
        (tmp / "logs").mkdir()
        paths, gguf_files = write_ggufs(p, args, tmp, work, timings)
        onnx_dirs, onnx_files, int4 = write_onnx(p, args, tmp, work, timings)
        validation = None
        if args.validate:

            validation = _timed(timings, "validate", validate_exports, model_dir,
                                {t: paths[t] for t in args.gguf}, onnx_dirs, paths.get("f16"), p.text,
                                args.n_ctx, args.threads, p.exact_ctx)
        shutil.rmtree(work)
        timings["total"] = time.time() - t0
        result = {"model": str(model_dir), "name": p.name, "arch": p.arch, "params": p.spec.params,
                  "files": gguf_files + onnx_files, "validation": validation, "timings_s": timings,
                  "imatrix": bool(p.imatrix), "pre_tokenizer": p.vocab["pre"] if p.vocab else None,
                  "onnx_int4": int4}
        result["figures"] = figs = figures(result)
        write_record(tmp, "export", asdict(args), inputs={"model": model_dir}, result=result, figures=figs)

        write_report(tmp / "report.html", result, figs)
    return result


def figures(result: dict) -> list[Figure]:
    """The run's figures: what was exported, and each artifact's size, real bits, fallbacks and quality."""
    v = result["validation"] or {}
    out = [setting("model", "model", result["name"]), setting("arch", "architecture", result["arch"]),
           analytic("params", "parameters", result["params"], "parameters", group="size"),
           from_file("artifacts", "artifacts written", len(result["files"]), "files"),
           Figure("wall_s", "wall time of the export", round(result["timings_s"]["total"], 1), "s", "lower",
                  "speed", note="one run, no repetitions")]
    if v:
        scoring = (v.get("scoring") or {}).get("what", "")
        out += [setting("ppl_scoring", "tokens scored for perplexity / KLD", scoring),
                _ppl("hf.ppl", "HF model (f32): perplexity", v["hf"], scoring),
                Figure("validation_failures", "validation failures (artifacts, tokenizer)",
                       len(v.get("failed", {})), "failures", "lower", "quality", exact=True,
                       note="; ".join(v.get("failed", {})))]
        if v.get("exact_ctx"):
            out += [setting("exact_ctx", "context within which the GGUF computes what HF does",
                            v["exact_ctx"], "tokens"),
                    Figure("validation_flags", f"artifacts differing from HF beyond {v['exact_ctx']} tokens",
                           len(v.get("flagged", {})), "files", "lower", "quality", exact=True,
                           note="; ".join(v.get("flagged", {})))]
        if "tokenizer" in v:
            t = v["tokenizer"]
            out.append(Figure("tokenizer_match", "tokenizer strings encoded alike (GGUF vs HF, of "
                                                 f"{t['strings']})",
                              t["matching"], "strings", "higher", "quality", exact=True, n=t["strings"],
                              note=f"{t['matching']} of {t['strings']} strings"))
    for f in result["files"]:
        k, name = f"{f['format']}.{f['type']}", f"{f['format'].upper()} {f['type']}"
        out += [from_file(f"{k}.size", f"{name}: file size", f["size_bytes"], "bytes", "lower", key=True),
                from_file(f"{k}.bpw", f"{name}: bits per weight", round(f["bits_per_weight"], 3), "bpw",
                          "lower")]
        if f["format"] == "gguf":
            out.append(from_file(f"{k}.fallbacks", f"{name}: tensors that fell back to another type",
                                 len(f["fallbacks"]), "tensors", "lower"))
        if f.get("settings"):
            out.append(setting(f"{k}.recipe", f"{name}: recipe kept by the search",
                               f["settings"]["candidate"]))
            out += _kept_speed(result.get("onnx_int4"), k, name)
        r = (v.get(f["format"]) or {}).get(f["type"])
        if not r:
            continue
        out += [Figure(f"{k}.max_rel_err", f"{name}: largest logit error vs HF (relative)", r["max_rel_err"],
                       "1", "lower", "quality", exact=True),
                Figure(f"{k}.top1", f"{name}: top-1 agreement with HF", r["top1_agree"], "share", "higher",
                       "quality", exact=True),
                _ppl(f"{k}.ppl", f"{name}: perplexity", r, scoring)]
        if "kld" in r:
            out.append(Figure(f"{k}.kld", f"{name}: KL divergence vs the f16 GGUF", r["kld"]["kld_mean"],
                              "nats", "lower", "quality", exact=True, n=r["kld"].get("positions"), key=True,
                              source=scoring))
    return out


def _kept_speed(s: dict | None, k: str, name: str) -> list[Figure]:
    """The kept int4 recipe's decode and prefill speed as the search timed them (none for a named recipe)."""
    c = next((c for c in (s or {}).get("candidates", []) if c["name"] == s["kept"]), None)
    sp = (s or {}).get("speed_protocol")
    if not c or not sp or not c.get("decode_tok_s"):
        return []
    src = f"onnxruntime-genai, {sp.get('threads') or 'all'} threads, the int4 search's short protocol"
    return [Figure(f"{k}.{ph}_tok_s", f"{name}: {ph} speed (search, {what})", round(c[f"{ph}_tok_s"], 2),
                   "tok/s", "higher", "speed", interval=c.get(f"{ph}_ci95"), n=sp["reps"], source=src)
            for ph, what in (("decode", f"{sp['tokens']} steps"), ("prefill", f"{sp['prompt']} tokens"))]


def _ppl(name: str, label: str, r: dict, scoring: str) -> Figure:
    """A perplexity with its 95 % interval, first order from the s.e. of the mean token loss."""
    se = r.get("nll_se")
    return Figure(name, label, r["perplexity"], "1", "lower", "quality", exact=True, key=True,
                  interval=ci95_se(se * r["perplexity"]) if se is not None else None,
                  n=r.get("tokens_scored"), source=scoring)
