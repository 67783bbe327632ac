"""What MODEL is: a GGUF, an HF folder, an ONNX folder, an export folder (slm.json listing its files), or a
bare config.json; and the GGUF the llama.cpp backend measures (made on demand by slm.quant's exporter and
quantizer, cached).

The cache (`$SLM_CACHE/quant`, default ~/.cache/slm/quant) is keyed by the weights' content — the SHA-256 that
slm.json records for a run's inputs (slm.record.model_sha256) — so replaced weights never find the files of
the old ones; an entry is made under its lock, and a second profile of the same weights waits for it rather
than failing. `slm cache` reports and cleans it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from slm.errors import SlmError
from slm.gguf import FLOAT_TYPES, check_magic, contents
from slm.guard import shared_entry
from slm.profiling.args import Inputs
from slm.profiling.ortgenai import is_onnx_dir
from slm.profiling.sweep import make_files
from slm.record import model_sha256, read_record
from slm.spec import load_spec

CACHE = Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "slm")) / "quant"


def _cache_dir(src: Path) -> tuple[Path, str]:
    """(entry folder, full SHA-256) of a source — a GGUF file or an HF folder — keyed by its content (its
    weight files and config.json: what slm.json's input hashes hold). Not created here: a run that fails
    before writing leaves no empty entry."""
    digest = model_sha256(src)
    return CACHE / digest[:16], digest


def _made(folder: Path, digest: str) -> bool:
    """A finished export entry made from exactly these weights (its own record's input hash)."""
    try:
        rec = read_record(folder)
    except SlmError:  # an unreadable entry is remade, never trusted
        return False
    return bool(rec) and rec.get("inputs", {}).get("model", {}).get("sha256") == digest


def _cached_files(out_dir: Path, types: tuple, source: Path, threads: int, given: dict,
                  progress: Callable[[str], None]) -> tuple[dict, list[str]]:
    """slm.profiling.sweep's make_files into `out_dir`, and the types it found already made there (by the
    file name make_files gives them)."""
    before = {t: out_dir / f"{source.stem.split('.')[0]}.{t}.gguf" for t in types if t not in given}
    before = {t: f for t, f in before.items() if f.is_file()}
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        files = make_files(source, types, out_dir, threads, given, progress)
    finally:
        if not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing made: no empty entry left
    return files, [t for t, f in before.items() if files.get(t) == f]


def _cache_note(kind: str, entry: Path, digest: str) -> str:
    """The report's line for files taken from the cache; marks the entry used (`slm cache clean
    --older-than` prunes by last use)."""
    made = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.stat().st_mtime))
    top = next((p for p in (entry, *entry.parents) if p.parent == CACHE), None)
    if top is not None:
        os.utime(top)
    return (f"{kind} taken from the cache {entry} (made {made} from weights with SHA-256 {digest[:12]}…, "
            "the same as these); `slm cache clean` removes it")


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
        entry, digest = _cache_dir(gguf)
        inp.files, reused = _cached_files(entry, quant, gguf, threads, {}, progress)
        if reused:
            inp.cache_note = _cache_note(f"GGUF {', '.join(reused)}", entry, digest)
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
    notes, entry = [], None
    if hf and ((want_gguf and "f16" not in files) or want_onnx):
        entry, digest = _cache_dir(hf)
        cache = entry / ("export-onnx" if want_onnx else "export")
        try:
            with shared_entry(cache, progress):  # another profile of these weights may be making it
                if _made(cache, digest):
                    notes.append(_cache_note(f"f16 GGUF{' and ONNX int4' if want_onnx else ''}", cache,
                                             digest))
                else:
                    progress(f"exporting {p.name} (f16 GGUF{' + ONNX int4' if want_onnx else ''}) with "
                             f"slm.quant; cached in {cache}")
                    export_f16(hf, cache, want_onnx)
        finally:
            if entry.is_dir() and not any(entry.iterdir()):
                entry.rmdir()  # a failed export leaves no empty entry
        files = {**_export_files(cache), **files}
    inp = Inputs(hf=hf, onnx=files.pop("onnx", None) if "onnxruntime-genai" in backends else None)
    if files and want_gguf:
        src = Path(files.get("f16") or next(iter(files.values())))
        want = quant or ("f16",)  # names already normalised and de-duplicated by ProfileArgs
        # files made from the cache's f16 live in its entry; from an export folder's file, under that file's
        # own content
        q_entry, q_digest = (entry / "quant", digest) if entry else _cache_dir(src)
        files, reused = _cached_files(q_entry, want, src, threads, files, progress)
        if reused:
            notes.append(_cache_note(f"GGUF {', '.join(reused)}", q_entry, q_digest))
        inp.files, inp.gguf = files, files[main_type(want)]
    inp.cache_note = "; ".join(notes)
    return inp
