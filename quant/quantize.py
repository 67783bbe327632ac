"""Quantize a GGUF with llama.cpp's own quantizer and say what the file really holds.

gguf-py quantizes only a few legacy types in numpy; K-quants and i-quants exist only in llama.cpp, so every
quantized type goes through `llama_model_quantize` (the library behind `llama-quantize`), loaded and logged
through the one llama.cpp room (llamacpp.py). The type table is slm.gguf's.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
from pathlib import Path

import numpy as np

from slm.errors import SlmError, disk_full
from slm.gguf import contents, get_type, read_header

from .llamacpp import captured_logs, last_error, lib


def _imatrix_param(L, imatrix: dict, keep: list):
    """A NULL-name-terminated array of {name, data, size} (llama_model_imatrix_data in llama.h); the buffers
    it points into are appended to `keep`, which must outlive the quantizer call."""

    arr = (L.llama_model_imatrix_data * (len(imatrix) + 1))()
    for i, (name, vec) in enumerate(imatrix.items()):
        v = np.ascontiguousarray(vec, dtype=np.float32)
        keep.append(v)
        arr[i].name = name.encode()
        arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = v.size
    arr[len(imatrix)].name = None
    keep.append(arr)
    return ctypes.cast(arr, ctypes.POINTER(L.llama_model_imatrix_data))


def quantize(src: Path | str, dst: Path | str, qtype: str, imatrix: dict | None = None,
             threads: int | None = None) -> str:
    """Write `dst` as `qtype` from the GGUF `src`; `imatrix` maps GGUF tensor name → float32 vector.

    Written to a temp file renamed into place, so a crash never leaves a half file that a later run would take
    for a finished one. Requantizing a quantized source is allowed (the profiler's sweep of a Q4_1 file does
    it; its report says that quality is then relative to that file). Returns llama.cpp's log of the run
    (captured rather than printed; `fallbacks_from_log` reads it).
    """
    L = lib()
    p = L.llama_model_quantize_default_params()
    p.ftype = getattr(L, get_type(qtype).ftype)
    p.nthread = threads or os.cpu_count() or 1
    p.allow_requantize = True
    keep: list = []
    if imatrix:
        p.imatrix = _imatrix_param(L, imatrix, keep)
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")  # per process (two profiles may share a cache dir)
    need = _expected_bytes(Path(src), qtype)
    if _free_bytes(dst.parent) < need:  # before the long part, not after llama.cpp gives up
        raise disk_full(dst, need=need)
    with captured_logs() as lines:
        rc = L.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(p))
    if rc != 0 or not tmp.is_file():
        written = tmp.stat().st_size if tmp.is_file() else 0
        tmp.unlink(missing_ok=True)
        # llama.cpp's log says only that writing failed; the free space tells whether the disk was the cause
        if _free_bytes(dst.parent) < 1.1 * need:  # the few percent the estimate leaves out
            raise disk_full(dst, written, need)
        raise SlmError(f"llama.cpp could not quantize {Path(src).name} to {qtype} ({last_error(lines)}): "
                       "check the source file (and --imatrix for i-quants)")
    tmp.replace(dst)
    return "\n".join(lines) + "\n"


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _expected_bytes(src: Path, qtype: str) -> int:
    """About how large the quantized file will be: the source's tensors at the type's nominal bits plus the
    source's metadata (vocabulary, merges); _M mixes and fallbacks add a few percent more."""
    info = contents(src)
    return int(info["params"] * get_type(qtype).bpw / 8 + info["size_bytes"] - info["tensor_bytes"])


# llama-quant.cpp's warning for a tensor whose rows do not fit the wanted type's blocks
_FALLBACK = re.compile(r"(\S+)\s+- ncols\s+(\d+) not divisible by (\d+) \(required for type\s+(\S+)\)"
                       r" -> falling back to\s+(\S+)")


def fallbacks_from_log(log: str) -> list[dict]:
    """The tensors llama.cpp quantized to another type than it wanted, with both types and the reason."""
    return [{"tensor": m[0], "wanted": m[3].upper(), "type": m[4].upper(), "row": int(m[1]),
             "why": f"row length {m[1]} is not a multiple of {m[2]}"} for m in _FALLBACK.findall(log)]


def inspect_gguf(path: Path, qtype: str, log: str | None = None) -> dict:
    """What the file really holds (slm.gguf.contents: bits per weight, bytes per ggml type) and the tensors
    that fell back, with `main_type` the type asked for.

    A tensor "fell back" when llama.cpp could not give it the type it wanted because its rows are not a
    whole number of that type's blocks (K-quants and most i-quants use 256-wide super-blocks; SmolLM2's
    hidden size 576 is not a multiple of 256). With the quantizer's `log` the list is llama.cpp's own;
    without it, tensors off the main type whose rows do not fit its blocks. Other tensors off the main
    type are llama.cpp's deliberate mix (e.g. q4_k_m keeps some attn_v/ffn_down in Q6_K).
    """
    want = get_type(qtype)
    header = read_header(path)
    fallbacks, mixed = [], []
    for t in header.tensors:
        if len(t.shape) < 2 or t.ggml_type == want.ggml_type:
            continue  # 1-D tensors (norms, biases) are always F32 by design
        row = t.shape[0]  # GGUF shapes are ggml order: ne[0] is the row length
        entry = {"tensor": t.name, "type": t.ggml_type, "row": row}
        if row % want.block:
            fallbacks.append({**entry, "why": f"row length {row} is not a multiple of {want.block} "
                                              f"({want.ggml_type} block)"})
        else:
            mixed.append({**entry, "why": "llama.cpp's mix for this type"})
    if log is not None:
        fallbacks = fallbacks_from_log(log)
        fell = {f["tensor"] for f in fallbacks}
        mixed = [m for m in mixed if m["tensor"] not in fell]
    return {**contents(header), "main_type": want.ggml_type, "fallbacks": fallbacks, "mixed": mixed}
