"""Load and save HF checkpoints (safetensors only) and stream their tensors one at a time.

Streaming is the point: surgery and merges read one tensor at a time from memory-mapped safetensors
shards and write shards as they fill, so peak memory stays near one shard plus one layer.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

from slm.errors import SlmError
from slm.guard import atomic_dir
from slm.record import write_record

# Files that travel with the weights: tokenizer, chat template, generation defaults.
AUX_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)
DEFAULT_SHARD_BYTES = 2 * 1024**3  # HF's default max_shard_size is 5GB; 2GB keeps peak memory lower
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---- reading checkpoints ------------------------------------------------------------------------------
def read_config(model_dir: Path | str) -> dict:
    model_dir = Path(model_dir)
    cfg = model_dir / "config.json"
    if not model_dir.is_dir():
        raise SlmError(f"model {model_dir} is not a directory: pass an HF checkpoint folder, a Hub id "
                       "org/name[@revision], or a GGUF through `slm import`")
    if not cfg.is_file():
        raise SlmError(f"no config.json in {model_dir}: {_what_instead(model_dir)}")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise SlmError(f"{cfg} is not valid JSON ({e}); re-download or re-save the checkpoint") from None


def _what_instead(folder: Path) -> str:
    """The fix for a folder that is not an HF checkpoint, by what it is: a training run names its final model
    or newest checkpoint, a checkpoint its model/, anything else `slm import` of a GGUF."""
    if (folder / "final" / "config.json").is_file():
        return f"it is a training run; pass its final model {folder / 'final'}"
    if (folder / "model" / "config.json").is_file():
        return f"it is a training checkpoint; pass its model {folder / 'model'}"
    steps = sorted((folder / "checkpoints").glob("step-*/model/config.json"))
    if steps:
        return f"it is a training run with no final model; pass a checkpoint's model, e.g. {steps[-1].parent}"
    return "not an HF checkpoint (use `slm import FILE.gguf OUT/` for a GGUF)"


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from its index when sharded. Pickle files are refused."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / n for n in names]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in model_dir.glob("*.bin")] + [p.name for p in model_dir.glob("*.pt")]
        hint = (f" (found pickle files {pickled}: convert them to safetensors; slm never unpickles)"
                if pickled else "")
        raise SlmError(f"no .safetensors weights in {model_dir}{hint}")
    for f in files:
        if not f.is_file():
            raise SlmError(f"missing shard {f.name} listed in {index.name}: re-download the checkpoint")
    return files


# safetensors' own API cannot stream: safe_open memory-maps whole files (RSS grows to the file size as
# tensors are touched) and save_file needs every tensor of a shard in memory at once. The format is simple
# (8-byte little-endian header length, a JSON header of dtype/shape/byte offsets, then raw bytes), so we read
# and write it by hand, one tensor at a time. https://github.com/huggingface/safetensors#format
ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
MAX_HEADER = 100 * 1024**2


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header without __metadata__, byte offset where tensor data starts); SlmError if the file is
    corrupt."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 0 < n <= min(MAX_HEADER, size - 8):
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        if 8 + n + end > size:
            raise ValueError(f"truncated: needs {8 + n + end} bytes, has {size}")
        for name, v in header.items():
            if v["dtype"] not in ST_DTYPES:
                raise ValueError(f"unsupported dtype {v['dtype']}")
            start, stop = v["data_offsets"]
            want = math.prod(v["shape"]) * ST_DTYPES[v["dtype"]].itemsize
            # a shape that disagrees with its bytes would fail later, inside a reshape
            if stop - start != want:
                raise ValueError(f"tensor {name} has shape {v['shape']} ({want} bytes) but {stop - start} "
                                 "bytes of data")
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise SlmError(f"{path} is not a valid safetensors file ({e}); re-download or re-save it") from None
    return header, 8 + n


def check_weights(model_dir: Path | str) -> list[Path]:
    """The checkpoint's weight files, each header read and checked: pickle-only, empty, truncated or
    inconsistent checkpoints fail here in one line, before any long work."""
    files = weight_files(Path(model_dir))
    for f in files:
        read_safetensors_header(f)
    return files


class TensorReader:
    """Read a checkpoint's tensors one at a time, across shards, with plain file reads (no mmap)."""

    def __init__(self, model_dir: Path | str):
        self.dir = Path(model_dir)
        self.config = read_config(self.dir)
        self._entries: dict[str, tuple[Path, dict, int]] = {}
        for f in weight_files(self.dir):
            header, start = read_safetensors_header(f)
            for k, v in header.items():
                self._entries[k] = (f, v, start)
        self._files: dict[Path, object] = {}

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> list[int]:
        return list(self._entry(name)[1]["shape"])

    def dtype(self, name: str) -> str:
        return self._entry(name)[1]["dtype"]

    def _entry(self, name: str):
        try:
            return self._entries[name]
        except KeyError:
            raise SlmError(f"tensor {name} not found in {self.dir}") from None

    def get(self, name: str) -> torch.Tensor:
        path, info, start = self._entry(name)
        a, b = info["data_offsets"]
        dtype, shape = ST_DTYPES[info["dtype"]], info["shape"]
        if b == a:
            return torch.empty(shape, dtype=dtype)
        f = self._files.get(path) or self._files.setdefault(path, open(path, "rb"))
        f.seek(start + a)
        buf = bytearray(b - a)
        if f.readinto(buf) != b - a:
            raise SlmError(f"{path} ended early while reading {name}: the file is truncated; re-download it")
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class ShardedWriter:
    """Write tensors into safetensors shards as they come (each tensor's bytes go to disk at once), plus the
    index when there is more than one shard. Peak memory: the tensor being written."""

    def __init__(self, out_dir: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.dir = Path(out_dir)
        self.max = max_shard_bytes
        self.total_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self._data = None  # open temp file with the current shard's tensor bytes
        self._header: dict[str, dict] = {}
        self._offset = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        if self._header and self._offset + n > self.max:
            self._flush()
        if self._data is None:
            self._data = open(self.dir / f".shard-{len(self._shards):05d}.data", "wb")
        if t.dtype not in ST_NAMES:
            raise SlmError(f"cannot store {name} of dtype {t.dtype} in safetensors")
        if n:
            # no copy
            self._data.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        self._header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [self._offset, self._offset + n]}
        self._offset += n
        self.total_bytes += n

    def _flush(self) -> None:
        data_path = self.dir / f".shard-{len(self._shards):05d}.data"
        if self._data is None:
            self._data = open(data_path, "wb")
        self._data.close()
        header = json.dumps({"__metadata__": {"format": "pt"}, **self._header},
                            separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # pad like safetensors does, so tensor data stays 8-byte aligned
        path = self.dir / f".shard-{len(self._shards):05d}.safetensors"
        with open(path, "wb") as out, open(data_path, "rb") as src:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            shutil.copyfileobj(src, out, 1 << 24)
        data_path.unlink()
        self._shards.append((path, list(self._header)))
        self._data, self._header, self._offset = None, {}, 0

    def close(self) -> list[Path]:
        if self._header or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            final = self.dir / "model.safetensors"
            os.replace(self._shards[0][0], final)
            return [final]
        weight_map, finals = {}, []
        for i, (path, names) in enumerate(self._shards):
            final = self.dir / f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(path, final)
            finals.append(final)
            weight_map.update({k: final.name for k in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return finals


def copy_aux_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer, chat template and generation config beside new weights."""
    copied = []
    for name in AUX_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def write_config(out_dir: Path, config: dict) -> None:
    (Path(out_dir) / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# ---- whole models (tests, parity checks, training) ----------------------------------------------------
def load_model(model_dir: Path | str, dtype: str = "float32", **kw):
    """An HF causal LM from a local checkpoint folder (safetensors only, no remote code)."""
    from transformers import AutoModelForCausalLM  # transformers: deferred, a heavy import

    check_weights(model_dir)
    read_config(model_dir)
    return AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=DTYPES[dtype], use_safetensors=True, trust_remote_code=False, **kw
    )


def cache_kwarg(model) -> str:
    """The name of forward's KV-cache argument: transformers 5.24 renamed `past_key_values` to `cache` (the
    old name warns until 5.40), and the range we support spans both."""

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def save_model(model, out: Path | str, tokenizer=None, src: Path | None = None, force: bool = False,
               max_shard_size: str = "2GB", inputs: Iterable[Path | str | None] = (),
               record: dict | None = None) -> Path:
    """save_pretrained into an atomic directory; tokenizer/aux files from `tokenizer` or copied from `src`;
    `record`: write_record's keyword arguments, so slm.json lands inside the same atomic write."""

    with atomic_dir(out, force, [src, *inputs]) as tmp:
        if record is not None:
            write_record(tmp, **record)
        model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if src is not None:
            for name in AUX_FILES:
                if (Path(src) / name).is_file() and not (tmp / name).exists():
                    shutil.copy2(Path(src) / name, tmp / name)
    return Path(out)
