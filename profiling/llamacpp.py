"""llama.cpp backend (GGUF) through llama-cpp-python's low-level API, measured the way `llama-bench` measures.

Timings come from llama.cpp's own counters (`llama_perf_context`: t_p_eval_ms for multi-token batches, t_eval_ms
for single-token steps), reset before each timed part. Memory comes from what llama.cpp logs when it allocates:
model buffers (weights), the KV cache (with its K/V types and cells) and the compute/output buffers — the same
lines a user sees with `llama-cli`; we capture them through `llama_log_set` while loading.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
from pathlib import Path

import numpy as np

from slm.errors import SlmError

KV_TYPES = ("f16", "q8_0", "q4_0")  # cache types llama.cpp supports on CPU for both K and V
_LOCK = threading.Lock()
_LINES: list[str] = []


def _lib():
    try:
        import llama_cpp
    except ImportError:  # pragma: no cover - the gguf extra is part of the install
        raise SlmError("llama-cpp-python is not installed: `pip install 'slm-lab[gguf]'`") from None
    llama_cpp.llama_backend_init()
    from llama_cpp import _logger

    if _logger.logger.level == 0:  # NOTSET would echo every llama.cpp line (e.g. context teardown) to stderr
        _logger.set_verbose(False)
    return llama_cpp


def _collect(level, text, user_data):  # ggml log callback: keep the lines while we listen
    _LINES.append(text.decode("utf-8", errors="replace"))


_CALLBACK = None  # the ctypes callback object must outlive the C side's pointer to it


@contextlib.contextmanager
def captured_logs():
    """Collect llama.cpp's log lines inside the block, then give logging back to llama-cpp-python's handler."""
    global _CALLBACK
    L = _lib()
    with _LOCK:
        if _CALLBACK is None:
            _CALLBACK = L.llama_log_callback(_collect)
        _LINES.clear()
        L.llama_log_set(_CALLBACK, ctypes.c_void_p(0))
        lines: list[str] = []
        try:
            yield lines
        finally:
            lines.extend("".join(_LINES).splitlines())
            _LINES.clear()
            from llama_cpp import _logger

            L.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


_MIB = 1024 * 1024
_RE_MODEL = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_RE_KV = re.compile(r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers.*K \((\w+)\):\s+([\d.]+) MiB,"
                    r" V \((\w+)\):\s+([\d.]+) MiB")
_RE_BUF = re.compile(r"(?:llama_context|sched_reserve):\s+(\S+)\s+(compute|output) buffer size =\s+([\d.]+) MiB")


def parse_memory(lines: list[str]) -> dict:
    """Bytes llama.cpp reports allocating: weights (model buffers), KV cache, compute and output buffers."""
    text = "\n".join(lines)
    out = {"weights": sum(float(m[1]) for m in _RE_MODEL.findall(text)) * _MIB}
    kv = _RE_KV.findall(text)
    if kv:
        size, cells, layers, tk, k, tv, v = kv[-1]
        out.update(kv_cache=float(size) * _MIB, kv_cells=int(cells), kv_layers=int(layers), kv_type_k=tk,
                   kv_type_v=tv, kv_k=float(k) * _MIB, kv_v=float(v) * _MIB)
    bufs = _RE_BUF.findall(text)
    out["compute"] = sum(float(m[2]) for m in bufs if m[1] == "compute") * _MIB
    out["output"] = sum(float(m[2]) for m in bufs if m[1] == "output") * _MIB
    return out


def check_gguf(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"GGUF file {path} not found: check the path")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise SlmError(f"{path} is not a GGUF file (bad magic): pass a .gguf export or an HF folder")
    return path


def _last_error(lines: list[str]) -> str:
    errs = [ln.strip() for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    return errs[-1] if errs else "no reason logged"


class LlamaCpp:
    """One GGUF loaded with one context; prefill/decode timings per the protocol (see protocol.py)."""

    name = "llama.cpp"

    def __init__(self, gguf: Path | str, n_ctx: int, threads: int, kv_type: str = "f16", n_batch: int = 2048,
                 n_ubatch: int = 512, seed: int = 0, gpu_layers: int = 0):
        if kv_type not in KV_TYPES:
            raise SlmError(f"unknown KV cache type {kv_type!r}: choose one of {', '.join(KV_TYPES)}")
        self.path = check_gguf(gguf)
        L = self.L = _lib()
        self.threads, self.n_batch, self.kv_type = threads, n_batch, kv_type
        self.rng = np.random.default_rng(seed)
        self._states: dict[int, ctypes.Array] = {}  # depth → saved sequence state
        with captured_logs() as lines:
            mp = L.llama_model_default_params()
            mp.n_gpu_layers = gpu_layers  # a Jetson's GPU when the wheel was built with CUDA; ignored on CPU builds
            self.model = L.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise SlmError(f"llama.cpp cannot load {self.path.name} ({_last_error(lines)}): re-export the GGUF "
                           "or update llama-cpp-python")
        self.n_ctx_train = L.llama_model_n_ctx_train(self.model)
        if n_ctx > self.n_ctx_train:
            self.close()
            raise SlmError(f"context {n_ctx} is above the model's max context {self.n_ctx_train}: lower --pp/--depths/--tg")
        vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(vocab)
        self.bos = L.llama_vocab_bos(vocab) if L.llama_vocab_get_add_bos(vocab) else -1
        self.vocab = vocab
        with captured_logs() as lines2:
            cp = L.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_batch, min(n_ubatch, n_batch)
            cp.n_threads = cp.n_threads_batch = threads
            cp.no_perf = False  # llama_perf_context needs the counters on
            if kv_type != "f16":  # a quantized V cache needs flash attention in llama.cpp
                t = {"q8_0": L.GGML_TYPE_Q8_0, "q4_0": L.GGML_TYPE_Q4_0}[kv_type]
                cp.type_k = cp.type_v = t
                cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
            self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            self.close()
            raise SlmError(f"llama.cpp cannot create a context of {n_ctx} tokens for {self.path.name} "
                           f"({_last_error(lines2)}): lower the context or free memory")
        self.n_ctx = L.llama_n_ctx(self.ctx)
        self.mem = parse_memory(lines + lines2)
        self.mem["file_bytes"] = self.path.stat().st_size

    # ---- the protocol ---------------------------------------------------------------------------------------
    def _tokens(self, n: int, first_bos: bool):
        toks = self.rng.integers(0, self.n_vocab, n, dtype=np.int32)
        if first_bos and self.bos >= 0 and n:
            toks[0] = self.bos
        return (self.L.llama_token * n)(*toks.tolist())

    def _prompt(self, n: int, first: bool = True) -> None:
        """Decode n random tokens in batches of n_batch, as llama-bench's test_prompt does."""
        L, done = self.L, 0
        while done < n:
            k = min(n - done, self.n_batch)
            arr = self._tokens(k, first and done == 0)
            if L.llama_decode(self.ctx, L.llama_batch_get_one(arr, k)) != 0:
                raise SlmError(f"llama_decode failed at {done + k} tokens (context {self.n_ctx}): lower the lengths")
            done += k
        L.llama_synchronize(self.ctx)

    def _perf_ms(self) -> float:
        d = self.L.llama_perf_context(self.ctx)
        return d.t_p_eval_ms + d.t_eval_ms

    def _clear(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), False)

    def _at_depth(self, depth: int) -> None:
        """Empty cache, then `depth` tokens in it: decoded once, restored from a saved sequence state afterwards
        (llama-bench does the same, so repetitions at depth do not pay for the fill again)."""
        L = self.L
        self._clear()
        if not depth:
            return
        if depth in self._states:
            buf = self._states[depth]
            L.llama_state_seq_set_data(self.ctx, buf, len(buf), 0)
            return
        self._prompt(depth)
        size = L.llama_state_seq_get_size(self.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        L.llama_state_seq_get_data(self.ctx, buf, size, 0)
        self._states[depth] = buf

    def prefill(self, n: int, depth: int = 0) -> float:
        self._at_depth(depth)
        self.L.llama_perf_context_reset(self.ctx)
        self._prompt(n, first=not depth)
        return self._perf_ms() / 1e3

    def decode(self, n: int, depth: int = 0) -> float:
        L = self.L
        self._at_depth(depth)
        toks = self._tokens(n, not depth)
        one = [(L.llama_token * 1)(t) for t in toks]  # built before the clock starts
        L.llama_perf_context_reset(self.ctx)
        for i in range(n):  # one token per step, as llama-bench's test_gen
            if L.llama_decode(self.ctx, L.llama_batch_get_one(one[i], 1)):
                raise SlmError(f"llama_decode failed at depth {depth + i}: lower --depths/--tg")
            L.llama_synchronize(self.ctx)
        return self._perf_ms() / 1e3

    def memory(self) -> dict:
        return dict(self.mem)

    # ---- quality: log-probabilities of a text -------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        L, b = self.L, text.encode()
        buf = (L.llama_token * (len(b) + 8))()
        n = L.llama_tokenize(self.vocab, b, len(b), buf, len(buf), True, False)
        if n < 0:
            raise SlmError("text too long to tokenize")
        return list(buf[:n])

    def logprobs(self, tokens: list[int]) -> np.ndarray:
        """log-softmax over the vocabulary at every position of one chunk (rows = positions), fp32."""
        L, n = self.L, len(tokens)
        if n > self.n_ctx or n > self.n_batch:
            raise SlmError(f"chunk of {n} tokens exceeds the context {self.n_ctx}")
        self._clear()
        batch = L.llama_batch_init(n, 0, 1)
        try:
            for i, t in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, True
            batch.n_tokens = n
            if L.llama_decode(self.ctx, batch) != 0:
                raise SlmError("llama_decode failed while scoring text")
            ptr = L.llama_get_logits(self.ctx)
            logits = np.ctypeslib.as_array(ptr, shape=(n, self.n_vocab)).astype(np.float32)
        finally:
            L.llama_batch_free(batch)
        m = logits.max(axis=1, keepdims=True)
        return logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))

    def close(self) -> None:
        L = self.L
        if getattr(self, "ctx", None):
            L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- quantization (llama.cpp's quantizer; gguf-py cannot write K-quants) ------------------------------------
def ftype_of(name: str) -> int:
    L = _lib()
    key = "LLAMA_FTYPE_MOSTLY_" + name.upper()
    if name.lower() == "f32":
        key = "LLAMA_FTYPE_ALL_F32"
    if not hasattr(L, key):
        raise SlmError(f"unknown quantization type {name!r}: use e.g. f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0,q3_k_m,q2_k")
    return getattr(L, key)


def quantize(src: Path, dst: Path, qtype: str, threads: int) -> Path:
    """Write `dst` as `qtype` from `src` with llama_model_quantize (requantizing a quantized source is allowed,
    and the report says so, since quality is then relative to the already-quantized source)."""
    L = _lib()
    p = L.llama_model_quantize_default_params()
    p.ftype, p.nthread, p.allow_requantize = ftype_of(qtype), threads, True
    tmp = Path(dst).with_name(f".{Path(dst).name}.tmp")
    with captured_logs() as lines:
        rc = L.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(p))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise SlmError(f"llama.cpp could not quantize {Path(src).name} to {qtype} ({_last_error(lines)})")
    tmp.replace(dst)
    return Path(dst)


def gguf_contents(path: Path) -> dict:
    """What a GGUF really holds: tensor count per type, parameters, file type, bits per weight (file bytes × 8 / params)."""
    from slm.profiling.kv import read_gguf

    r = read_gguf(path)
    counts: dict[str, int] = {}
    params = 0
    for t in r.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        params += int(t.n_elements)
    size = Path(path).stat().st_size
    return {"tensor_types": counts, "params": params, "size_bytes": size, "bits_per_weight": size * 8 / max(params, 1)}
