"""Quantize a GGUF with llama.cpp's own quantizer and say what the file really holds.

gguf-py quantizes only a few legacy types in numpy; K-quants and i-quants exist only in llama.cpp, so every
quantized type goes through `llama_cpp.llama_model_quantize` (the library behind `llama-quantize`).
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

from slm.errors import SlmError

# Our name → (LLAMA_FTYPE_MOSTLY_* constant name, the ggml type most tensors get). Names and the
# type each ftype maps to follow tools/quantize/quantize.cpp and llama_ftype_get_default_type.
QUANT_TYPES = {
    "q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", "Q8_0"),
    "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", "Q6_K"),
    "q5_k_m": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", "Q5_K"),
    "q5_k_s": ("LLAMA_FTYPE_MOSTLY_Q5_K_S", "Q5_K"),
    "q5_1": ("LLAMA_FTYPE_MOSTLY_Q5_1", "Q5_1"),
    "q5_0": ("LLAMA_FTYPE_MOSTLY_Q5_0", "Q5_0"),
    "q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_K"),
    "q4_k_s": ("LLAMA_FTYPE_MOSTLY_Q4_K_S", "Q4_K"),
    "q4_1": ("LLAMA_FTYPE_MOSTLY_Q4_1", "Q4_1"),
    "q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_0"),
    "iq4_nl": ("LLAMA_FTYPE_MOSTLY_IQ4_NL", "IQ4_NL"),
    "iq4_xs": ("LLAMA_FTYPE_MOSTLY_IQ4_XS", "IQ4_XS"),
    "q3_k_l": ("LLAMA_FTYPE_MOSTLY_Q3_K_L", "Q3_K"),
    "q3_k_m": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", "Q3_K"),
    "q3_k_s": ("LLAMA_FTYPE_MOSTLY_Q3_K_S", "Q3_K"),
    "iq3_m": ("LLAMA_FTYPE_MOSTLY_IQ3_M", "IQ3_S"),
    "iq3_s": ("LLAMA_FTYPE_MOSTLY_IQ3_S", "IQ3_S"),
    "q2_k": ("LLAMA_FTYPE_MOSTLY_Q2_K", "Q2_K"),
    # llama.cpp refuses these without an importance matrix (tensor_requires_imatrix in llama-quant.cpp)
    "iq3_xxs": ("LLAMA_FTYPE_MOSTLY_IQ3_XXS", "IQ3_XXS"),
    "q2_k_s": ("LLAMA_FTYPE_MOSTLY_Q2_K_S", "Q2_K"),
    "iq2_m": ("LLAMA_FTYPE_MOSTLY_IQ2_M", "IQ2_S"),
    "iq2_s": ("LLAMA_FTYPE_MOSTLY_IQ2_S", "IQ2_XS"),
    "iq2_xs": ("LLAMA_FTYPE_MOSTLY_IQ2_XS", "IQ2_XS"),
    "iq2_xxs": ("LLAMA_FTYPE_MOSTLY_IQ2_XXS", "IQ2_XXS"),
    "iq1_m": ("LLAMA_FTYPE_MOSTLY_IQ1_M", "IQ1_M"),
    "iq1_s": ("LLAMA_FTYPE_MOSTLY_IQ1_S", "IQ1_S"),
}
NEEDS_IMATRIX = ("iq3_xxs", "q2_k_s", "iq2_m", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s")
FLOAT_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}  # written directly by gguf_write
ALL_TYPES = tuple(FLOAT_TYPES) + tuple(QUANT_TYPES)


def check_types(names: list[str], have_imatrix: bool) -> list[str]:
    """Normalised, de-duplicated type names; SlmError listing the valid ones for anything unknown."""
    out = []
    for n in names:
        k = n.strip().lower()
        if k not in ALL_TYPES:
            raise SlmError(f"unknown GGUF type {n!r}: valid types are {', '.join(ALL_TYPES)}")
        if k in NEEDS_IMATRIX and not have_imatrix:
            raise SlmError(f"llama.cpp needs an importance matrix for {k}: pass --imatrix CALIBRATION.txt or pick "
                           f"another type")
        if k not in out:
            out.append(k)
    if not out:
        raise SlmError("no GGUF type given: pass e.g. --gguf q8_0,q6_k,q4_k_m")
    return out


# llama-quant.cpp's warning for a tensor whose rows do not fit the wanted type's blocks
_FALLBACK = re.compile(r"(\S+)\s+- ncols\s+(\d+) not divisible by (\d+) \(required for type\s+(\S+)\)"
                       r" -> falling back to\s+(\S+)")


def quantize(src: Path, dst: Path, qtype: str, imatrix: dict | None = None, nthread: int | None = None) -> str:
    """Quantize the F32/F16 GGUF `src` to `dst` as `qtype`; `imatrix` maps GGUF tensor name → float32 vector.

    Returns llama.cpp's log of the run (captured rather than printed; parse it with `fallbacks_from_log`).
    """
    import llama_cpp
    import llama_cpp._logger as llama_logger
    import numpy as np

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[qtype][0])
    params.nthread = nthread or os.cpu_count() or 1
    keep = []  # the ctypes buffers must outlive the call
    if imatrix:
        # A NULL-name-terminated array of {name, data, size} (llama_model_imatrix_data in llama.h)
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, vec) in enumerate(imatrix.items()):
            v = np.ascontiguousarray(vec, dtype=np.float32)
            keep.append(v)
            arr[i].name = name.encode()
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(imatrix)].name = None
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr)
    log: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):
        log.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:  # give llama-cpp-python its own logger back
        llama_cpp.llama_log_set(llama_logger.llama_log_callback, ctypes.c_void_p(0))
    text = "".join(log)
    if rc != 0 or not Path(dst).is_file():
        raise RuntimeError(f"llama_model_quantize failed for {qtype} (rc={rc}): {text[-2000:]}")
    return text


def fallbacks_from_log(log: str) -> list[dict]:
    """The tensors llama.cpp quantized to another type than it wanted, with both types and the reason."""
    return [{"tensor": m[0], "wanted": m[3].upper(), "type": m[4].upper(), "row": int(m[1]),
             "why": f"row length {m[1]} is not a multiple of {m[2]}"} for m in _FALLBACK.findall(log)]


def tensor_infos(path: Path) -> list[tuple[str, list[int], str]]:
    """[(name, shape in ggml order, ggml type name)] from a GGUF's header.

    Written by hand because gguf.GGUFReader builds a numpy view for every metadata string (≈ 100k for a
    49k-token vocabulary + merges: seconds per file) and we only need the tensor table. Layout per the GGUF
    spec (ggml/docs/gguf.md): magic, version, n_tensors, n_kv, the key/value pairs, then the tensor infos.
    """
    import mmap
    import struct

    import gguf

    vt = gguf.GGUFValueType
    fixed = {vt.UINT8: 1, vt.INT8: 1, vt.UINT16: 2, vt.INT16: 2, vt.UINT32: 4, vt.INT32: 4, vt.FLOAT32: 4,
             vt.BOOL: 1, vt.UINT64: 8, vt.INT64: 8, vt.FLOAT64: 8}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        n_tensors, n_kv = struct.unpack_from("<QQ", m, 8)
        off = 24

        def skip_string(o: int) -> int:
            return o + 8 + struct.unpack_from("<Q", m, o)[0]

        def skip_value(o: int, t: int) -> int:
            if t == vt.STRING:
                return skip_string(o)
            if t == vt.ARRAY:
                sub, n = struct.unpack_from("<IQ", m, o)
                o += 12
                if sub in fixed:
                    return o + n * fixed[sub]
                for _ in range(n):
                    o = skip_value(o, sub)
                return o
            return o + fixed[t]

        for _ in range(n_kv):
            off = skip_string(off)
            (t,) = struct.unpack_from("<I", m, off)
            off = skip_value(off + 4, t)
        out = []
        for _ in range(n_tensors):
            n = struct.unpack_from("<Q", m, off)[0]
            name = m[off + 8:off + 8 + n].decode()
            off += 8 + n
            (nd,) = struct.unpack_from("<I", m, off)
            shape = list(struct.unpack_from(f"<{nd}Q", m, off + 4))
            (ty,) = struct.unpack_from("<I", m, off + 4 + 8 * nd)
            off += 4 + 8 * nd + 4 + 8  # dims, type, data offset
            out.append((name, shape, gguf.GGMLQuantizationType(ty).name))
    return out


def inspect_gguf(path: Path, qtype: str, log: str | None = None) -> dict:
    """What the file really holds: bits per weight, bytes per ggml type, and the tensors that fell back.

    A tensor "fell back" when llama.cpp could not give it the type it wanted because its rows are not a
    whole number of that type's blocks (K-quants and most i-quants use 256-wide super-blocks; SmolLM2's
    hidden size 576 is not a multiple of 256). With the quantizer's `log` the list is llama.cpp's own;
    without it, tensors off the main type whose rows do not fit its blocks. Other tensors off the main
    type are llama.cpp's deliberate mix (e.g. q4_k_m keeps some attn_v/ffn_down in Q6_K).
    """
    import gguf

    main = FLOAT_TYPES.get(qtype) or QUANT_TYPES[qtype][1]
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[main]][0]
    n_el = n_bytes = 0
    by_type: dict[str, dict] = {}
    fallbacks, mixed = [], []
    for name, shape, ty in tensor_infos(path):
        elems = 1
        for d in shape:
            elems *= d
        blk, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ty]]
        nbytes = elems // blk * size
        n_el += elems
        n_bytes += nbytes
        e = by_type.setdefault(ty, {"tensors": 0, "params": 0, "bytes": 0})
        e["tensors"] += 1
        e["params"] += elems
        e["bytes"] += nbytes
        if len(shape) < 2 or ty == main:
            continue  # 1-D tensors (norms, biases) are always F32 by design
        row = shape[0]  # GGUF shapes are ggml order: ne[0] is the row length
        entry = {"tensor": name, "type": ty, "row": row}
        if row % block:
            fallbacks.append({**entry, "why": f"row length {row} is not a multiple of {block} ({main} block)"})
        else:
            mixed.append({**entry, "why": "llama.cpp's mix for this type"})
    if log is not None:
        fallbacks = fallbacks_from_log(log)
        fell = {f["tensor"] for f in fallbacks}
        mixed = [m for m in mixed if m["tensor"] not in fell]
    return {"bits_per_weight": 8 * n_bytes / max(n_el, 1), "params": n_el, "tensor_bytes": n_bytes,
            "main_type": main, "by_type": by_type, "fallbacks": fallbacks, "mixed": mixed}
