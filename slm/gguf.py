"""What the GGUF format and its quantization types are — format knowledge only, no llama.cpp.

One table of the file types slm knows (name, llama.cpp's LLAMA_FTYPE_* constant, the ggml type most tensors
get, nominal bits per weight, whether an importance matrix is required), the KV-cache element sizes, one
header reader, one bits-per-weight definition and a ModelSpec from a GGUF's metadata. quant/ drives llama.cpp
with these names; profiling/ and the CLI read GGUFs through this module.

The header is read by hand (layout per ggml/docs/gguf.md: magic, version, n_tensors, n_kv, key/value pairs,
tensor infos, aligned data) because gguf.GGUFReader builds a numpy view for every metadata string
(≈ 100k for a 49k-token vocabulary + merges: seconds per file) and we need only the scalars and the tensor
table. Block sizes come from gguf-py's GGML_QUANT_SIZES, the one copy of ggml-common.h's block layouts.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf as gguf_py

from slm.errors import SlmError

MAGIC = b"GGUF"
# The source config.json, kept in an slm-written GGUF under a key llama.cpp ignores, so `slm import` gives
# back the same architecture (explicit head_dim, RoPE scaling, per-layer lists), not what GGUF keys imply.
HF_CONFIG_KEY = "slm.hf_config"
# GGUF architectures whose Q/K rows llama.cpp expects interleaved (the converter's LlamaModel.permute and its
# subclasses); qwen2/qwen3 keep HF's rotate-half order.
QK_PERMUTED_ARCHS = ("llama", "smollm3")


# ---- the quant types ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantType:
    """One GGUF file type as `llama-quantize` names it."""

    name: str  # our lower-case name, as llama-quantize spells it (q4_k_m)
    ftype: str  # llama.h's LLAMA_FTYPE_* constant
    ggml_type: str  # the ggml type most 2-D tensors get (llama_ftype_get_default_type in llama-quant.cpp)
    needs_imatrix: bool = False  # llama.cpp refuses it without an importance matrix (tensor_requires_imatrix)

    @property
    def block(self) -> int:
        """Values per quantization block (32 legacy, 256 K-quant super-blocks, 1 float)."""
        return gguf_py.GGML_QUANT_SIZES[gguf_py.GGMLQuantizationType[self.ggml_type]][0]

    @property
    def bpw(self) -> float:
        """Nominal bits per weight of the main type's blocks (block bytes × 8 / block values). The _M mixes
        keep some tensors at more bits and fallbacks raise it further: a real file reports its own
        `bits_per_weight`."""
        return type_bpw(self.ggml_type)

    @property
    def is_float(self) -> bool:
        return self.ggml_type in ("F32", "F16", "BF16")


def _q(name: str, ggml_type: str, needs_imatrix: bool = False, ftype: str | None = None) -> QuantType:
    return QuantType(name, ftype or f"LLAMA_FTYPE_MOSTLY_{name.upper()}", ggml_type, needs_imatrix)


# Names and main types follow tools/quantize/quantize.cpp and llama_ftype_get_default_type; floats are written
# directly by slm.quant's GGUF writer, every other type goes through llama.cpp's quantizer.
TYPES: dict[str, QuantType] = {q.name: q for q in (
    _q("f32", "F32", ftype="LLAMA_FTYPE_ALL_F32"), _q("f16", "F16"), _q("bf16", "BF16"),
    _q("q8_0", "Q8_0"), _q("q6_k", "Q6_K"), _q("q5_k_m", "Q5_K"), _q("q5_k_s", "Q5_K"), _q("q5_1", "Q5_1"),
    _q("q5_0", "Q5_0"), _q("q4_k_m", "Q4_K"), _q("q4_k_s", "Q4_K"), _q("q4_1", "Q4_1"), _q("q4_0", "Q4_0"),
    _q("iq4_nl", "IQ4_NL"), _q("iq4_xs", "IQ4_XS"), _q("q3_k_l", "Q3_K"), _q("q3_k_m", "Q3_K"),
    _q("q3_k_s", "Q3_K"), _q("iq3_m", "IQ3_S"), _q("iq3_s", "IQ3_S"), _q("q2_k", "Q2_K"),
    _q("iq3_xxs", "IQ3_XXS", True), _q("q2_k_s", "Q2_K", True), _q("iq2_m", "IQ2_S", True),
    _q("iq2_s", "IQ2_XS", True), _q("iq2_xs", "IQ2_XS", True), _q("iq2_xxs", "IQ2_XXS", True),
    _q("iq1_m", "IQ1_M", True), _q("iq1_s", "IQ1_S", True),
)}
FLOAT_TYPES = tuple(n for n, q in TYPES.items() if q.is_float)
QUANT_TYPES = tuple(n for n, q in TYPES.items() if not q.is_float)
# No quantized file type stores a 2-D tensor above Q8_0: the mixes raise attn_v/ffn_down/output to at most
# Q6_K/Q8_0 and row-length fallbacks go to a wider legacy type (llama-quant.cpp, llama_tensor_get_type).
# Used only for pre-flight size bounds (disk checks), never reported as a figure.
MAX_QUANT_BPW = 8.5


def type_bpw(ggml_type: str) -> float:
    """Bits per value of a ggml tensor type (F16 → 16, Q8_0 → 34 B × 8 / 32 = 8.5, Q6_K → 210 × 8 / 256)."""
    block, size = gguf_py.GGML_QUANT_SIZES[gguf_py.GGMLQuantizationType[ggml_type]]
    return size * 8 / block


def get_type(name: str) -> QuantType:
    t = TYPES.get(str(name).strip().lower())
    if t is None:
        raise SlmError(f"unknown GGUF type {name!r}: valid types are {', '.join(TYPES)}")
    return t


def parse_types(names: str | list | tuple, have_imatrix: bool = True) -> tuple[str, ...]:
    """Normalised, de-duplicated type names from 'q8_0,q6_k' or a list; one-line errors for unknown types and
    for types that need an importance matrix when there is none."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for n in items:
        if not str(n).strip():
            continue
        t = get_type(n)
        if t.needs_imatrix and not have_imatrix:
            raise SlmError(f"llama.cpp needs an importance matrix for {t.name}: pass --imatrix "
                           "CALIBRATION.txt or pick another type")
        if t.name not in out:
            out.append(t.name)
    return tuple(out)


def size_upper_bound(params: int, name: str) -> float:
    """Bytes a file of this type can take at most (pre-flight disk checks)."""
    t = get_type(name)
    return params * (t.bpw if t.is_float else max(t.bpw, MAX_QUANT_BPW)) / 8


# ---- KV cache element sizes --------------------------------------------------------------------------------
# Cache types llama.cpp supports on CPU for both K and V; quantized ones are ggml blocks of 32 values
# (block_q8_0 = 32 int8 + an f16 scale = 34 bytes, block_q4_0 = 16 bytes of nibbles + an f16 scale = 18
# bytes).
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")


def kv_element_bytes(cache_type: str) -> float:
    """Bytes per cached K or V value: f16 2, q8_0 34/32, q4_0 18/32."""
    if cache_type not in KV_CACHE_TYPES:
        raise SlmError(f"unknown KV cache type {cache_type!r}: choose one of {', '.join(KV_CACHE_TYPES)}")
    return type_bpw(cache_type.upper()) / 8


# ---- the header --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple  # ggml order: shape[0] is the row length
    ggml_type: str
    offset: int  # from the start of the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        block, size = gguf_py.GGML_QUANT_SIZES[gguf_py.GGMLQuantizationType[self.ggml_type]]
        return self.n_elements // block * size


@dataclass
class Header:
    """What a GGUF's header says: metadata scalars (arrays as their length, except short numeric ones) and the
    tensor table, checked against the file's size."""

    path: Path
    version: int
    metadata: dict
    array_lengths: dict  # key → length, for every array-valued key
    tensors: list  # [TensorInfo]
    data_start: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


def check_magic(path: Path | str) -> Path:
    """The path, if it is a file that starts with the GGUF magic; a one-line error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"GGUF file {path} not found: check the path")
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise SlmError(f"{path} is not a GGUF file (bad magic): pass a .gguf export or an HF folder")
    return path


_VT = gguf_py.GGUFValueType
_FIXED = {_VT.UINT8: "B", _VT.INT8: "b", _VT.UINT16: "H", _VT.INT16: "h", _VT.UINT32: "I", _VT.INT32: "i",
          _VT.FLOAT32: "f", _VT.BOOL: "?", _VT.UINT64: "Q", _VT.INT64: "q", _VT.FLOAT64: "d"}
_SHORT_ARRAY = 64  # numeric arrays up to this length are kept (per-layer lists); longer ones only counted
_MAX_NESTING = 8  # arrays of arrays allowed this deep


class _Cursor:
    """Bounds-checked little-endian reads from a memory map."""

    def __init__(self, m: mmap.mmap):
        self.m, self.off = m, 0

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.off + size > len(self.m):
            raise EOFError
        vals = struct.unpack_from("<" + fmt, self.m, self.off)
        self.off += size
        return vals if len(vals) > 1 else vals[0]

    def string(self, keep: bool = True) -> str | None:
        n = self.take("Q")
        if self.off + n > len(self.m):
            raise EOFError
        s = self.m[self.off:self.off + n].decode("utf-8", errors="replace") if keep else None
        self.off += n
        return s

    def value(self, t: int, keep: bool = True, depth: int = 0):
        if t == _VT.STRING:
            return self.string(keep)
        if t == _VT.ARRAY:
            sub, n = self.take("I"), self.take("Q")
            # real files nest an array at most once; a deep nest would only exhaust Python's stack
            if depth >= _MAX_NESTING:
                raise ValueError(f"arrays nested more than {_MAX_NESTING} deep")
            if sub in _FIXED:
                size = struct.calcsize("<" + _FIXED[sub]) * n
                if self.off + size > len(self.m):
                    raise EOFError
                vals = (list(struct.unpack_from(f"<{n}{_FIXED[sub]}", self.m, self.off)) if n <= _SHORT_ARRAY
                        else None)
                self.off += size
                return ("array", n, vals)
            if n > len(self.m) - self.off:  # every element takes at least a byte: a count past the file's end
                raise EOFError
            for _ in range(n):
                self.value(sub, keep=False, depth=depth + 1)
            return ("array", n, None)
        if t not in _FIXED:
            raise ValueError(f"unknown metadata value type {t}")
        return self.take(_FIXED[t])


def read_header(path: Path | str) -> Header:
    """Parse a GGUF header; damaged or truncated files give one clear error naming the file."""
    path = check_magic(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            c = _Cursor(m)
            c.off = 4
            version, n_tensors, n_kv = c.take("I"), c.take("Q"), c.take("Q")
            if version not in (2, 3) or n_tensors > 1 << 24 or n_kv > 1 << 24:
                raise ValueError(f"version {version}, {n_tensors} tensors, {n_kv} keys")
            meta, lengths = {}, {}
            for _ in range(n_kv):
                key = c.string()
                v = c.value(c.take("I"))
                if isinstance(v, tuple):
                    lengths[key] = v[1]
                    if v[2] is not None:
                        meta[key] = v[2]
                else:
                    meta[key] = v
            tensors = []
            for _ in range(n_tensors):
                name = c.string()
                nd = c.take("I")
                if not 1 <= nd <= 4:  # ggml tensors have 1 to GGML_MAX_DIMS = 4 dimensions
                    raise ValueError(f"tensor {name} has {nd} dimensions")
                shape = tuple(c.take("Q") for _ in range(nd))
                ty, off = c.take("I"), c.take("Q")
                tensors.append(TensorInfo(name, tuple(shape), gguf_py.GGMLQuantizationType(ty).name, off))
            align = meta.get("general.alignment", 32)
            # llama.cpp's gguf.cpp refuses an alignment that is not a power of two (0 included)
            if isinstance(align, bool) or not isinstance(align, int) or align < 1 or align & (align - 1):
                raise ValueError(f"general.alignment is {align!r}, not a power of two")
            data_start = -(-c.off // align) * align
            size = len(m)
    except (EOFError, ValueError, struct.error) as e:
        why = "it ends inside the header" if isinstance(e, EOFError) else f"the header is damaged ({e})"
        raise SlmError(f"cannot read GGUF {path.name}: {why}; re-export or re-download it") from None
    for t in tensors:
        if data_start + t.offset + t.n_bytes > size:
            raise SlmError(f"GGUF {path.name} is truncated: tensor {t.name} ends past the file's {size} "
                           "bytes; re-export or re-download it")
    return Header(path, version, meta, lengths, tensors, data_start)


# ---- what a file holds -------------------------------------------------------------------------------------
def bits_per_weight(tensors: list) -> float:
    """Tensor data bits / parameters — llama.cpp's own BPW (llama-model-loader prints n_bytes × 8 / n_elements
    over the tensors); metadata (vocabulary, merges) is not counted."""
    n = sum(t.n_elements for t in tensors)
    return 8 * sum(t.n_bytes for t in tensors) / max(n, 1)


def contents(source: Path | str | Header) -> dict:
    """What a GGUF (a path, or a header already read) really holds: parameters, tensor bytes, bits per weight,
    file size, and per ggml type the tensor count, parameters and bytes; `main_type` is the type holding the
    most parameters."""
    h = source if isinstance(source, Header) else read_header(source)
    by_type: dict[str, dict] = {}
    for t in h.tensors:
        e = by_type.setdefault(t.ggml_type, {"tensors": 0, "params": 0, "bytes": 0})
        e["tensors"] += 1
        e["params"] += t.n_elements
        e["bytes"] += t.n_bytes
    return {"params": sum(t.n_elements for t in h.tensors), "tensor_bytes": sum(t.n_bytes for t in h.tensors),
            "bits_per_weight": bits_per_weight(h.tensors), "size_bytes": h.path.stat().st_size,
            "by_type": by_type,
            "main_type": max(by_type, key=lambda k: by_type[k]["params"]) if by_type else None,
            "architecture": h.architecture}


# GGUF architecture names → HF model_type (SmolLM/SmolLM2 and Mistral are written as `llama`)
