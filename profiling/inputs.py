"""What MODEL is: a GGUF, an HF folder, an ONNX folder, an export folder (slm.json listing its files), or a
bare config.json; and the GGUF the llama.cpp backend measures (made on demand by slm.quant's exporter and
quantizer, cached)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from slm.errors import SlmError
from slm.gguf import FLOAT_TYPES, check_magic, contents
from slm.profiling.args import Inputs
from slm.profiling.ortgenai import is_onnx_dir
from slm.profiling.sweep import make_files
from slm.record import read_record
from slm.spec import load_spec

CACHE = Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "slm")) / "quant"


def _cache_dir(src: Path) -> Path:
    """Quantized files are cached per source (path, size, mtime): a re-run does not quantize again."""
    st = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    d = CACHE / key
    d.mkdir(parents=True, exist_ok=True)
    return d


def _export_files(folder: Path) -> dict:
    """type → path of the GGUFs an export folder's slm.json lists (result["files"])."""

    rec = read_record(folder) or {}
    files = {}
    for f in rec.get("result", {}).get("files", []):
        p = Path(f.get("path", ""))
        p = p if p.is_absolute() else folder / p
        if str(f.get("type", "")).lower() and p.suffix == ".gguf" and p.is_file():
            files[str(f["type"]).lower()] = p
        elif p.is_dir() and is_onnx_dir(p):
            files.setdefault("onnx", p)
    return files


def main_type(quant: tuple) -> str:
    """The type the main llama.cpp backend measures: the first non-float type asked for, else f16."""
    return next((q for q in quant if q not in FLOAT_TYPES), "f16")


def export_f16(hf: Path, out: Path, onnx: bool) -> dict:
    """HF folder → export folder with an f16 GGUF (and an int4 ONNX model when `onnx`), by slm.quant's
    exporter."""
    from slm.quant.export import ExportArgs, export  # torch: deferred, a heavy import

    return export(hf, out, ExportArgs(gguf=["f16"], onnx=["int4"] if onnx else [], validate=False,
                                      force=True))


def _from_gguf(gguf: Path, quant: tuple, threads: int, progress: Callable[[str], None]) -> Inputs:
    """A GGUF file: measured as is; the sweep's types are requantized from it (and the report says so)."""

    inp = Inputs(gguf=check_magic(gguf))
    if quant:
        inp.source_note = (f"quantized types were made from {gguf.name} (mostly "
                           f"{contents(gguf)['main_type']}); their quality is relative to that file, not to "
                           "the original weights")
        inp.files = make_files(gguf, quant, _cache_dir(gguf), threads, {}, progress)
    return inp


def resolve(model: str | Path | None, config: str | Path | None, quant: tuple, threads: int,
            need_ctx: int = 0, backends: tuple = ("llama.cpp", "torch", "onnxruntime-genai"),
            progress: Callable[[str], None] = print) -> Inputs:
    """Inputs for `profile`; an HF folder is exported (f16 GGUF, ONNX int4 if that backend runs) into the
    cache."""

    if config:
        c = Path(config)
        if not c.is_file():
            raise SlmError(f"config {c} not found: pass a config.json")
        return Inputs(config=c)
    if not model:
        raise SlmError("pass MODEL (GGUF, HF folder, ONNX folder or export folder) or --config config.json")
    p = Path(model)
    if not p.exists():
        raise SlmError(f"model {p} not found: check the path")
    if p.is_file():
        return Inputs(config=p) if p.name == "config.json" else _from_gguf(p, quant, threads, progress)
    if is_onnx_dir(p):
        return Inputs(onnx=p)
    files = _export_files(p)
    hf = p if (p / "config.json").is_file() and any(p.glob("*.safetensors")) else None
    if not hf and not files:
        if (p / "config.json").is_file():
            return Inputs(config=p / "config.json")
        raise SlmError(f"{p} holds no GGUF, safetensors, ONNX model or config.json: pass a model folder or "
                       "file")
    if hf:
        from slm.io import check_weights  # torch: deferred, a heavy import

        check_weights(hf)  # a damaged checkpoint fails here in one line, before the export
        spec = load_spec(hf)
        if need_ctx > spec.max_context:  # before the export, which is long work
            raise SlmError(f"the tests need a context of {need_ctx} tokens, above the model's max context "
                           f"{spec.max_context}: lower --pp/--depths/--tg")
    want_gguf = "llama.cpp" in backends or bool(quant)
    want_onnx = "onnxruntime-genai" in backends and "onnx" not in files
    if hf and ((want_gguf and "f16" not in files) or want_onnx):
        cache = _cache_dir(p / "config.json") / ("export-onnx" if want_onnx else "export")
        if not (cache / "slm.json").is_file():
            progress(f"exporting {p.name} (f16 GGUF{' + ONNX int4' if want_onnx else ''}) with slm.quant; "
                     f"cached in {cache}")
            export_f16(hf, cache, want_onnx)
        files = {**_export_files(cache), **files}
    inp = Inputs(hf=hf, onnx=files.pop("onnx", None) if "onnxruntime-genai" in backends else None)
    if files and want_gguf:
        src = files.get("f16") or next(iter(files.values()))
        want = quant or ("f16",)  # names already normalised and de-duplicated by ProfileArgs
        files = make_files(Path(src), want, _cache_dir(Path(src)), threads, files, progress)
        inp.files, inp.gguf = files, files[main_type(want)]
    return inp
