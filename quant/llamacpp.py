"""The one room that drives llama.cpp: library loading, log capture, memory log parsing and the context
wrapper.

Everything goes through llama-cpp-python's low-level API (the C functions of llama.h), so the profiler and
export validation run the same code: `LlamaCpp` times prefill/decode the way `llama-bench` does (profiling's
llama.cpp backend) and returns logits, greedy tokens and the GGUF's own token ids (export validation, the
quality sweep). The quantizer (`quantize.py`) uses this module's loading and logs.

Timings come from llama.cpp's own counters (`llama_perf_context`: t_p_eval_ms for multi-token batches,
t_eval_ms for single-token steps), reset before each timed part. Memory comes from what llama.cpp logs when it
allocates: model buffers (weights), the KV cache (with its K/V types and cells) and the compute/output buffers
— the same lines a user sees with `llama-cli`; we capture them through `llama_log_set` while loading.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
import time
from pathlib import Path

import numpy as np

from slm.errors import SlmError
from slm.gguf import KV_CACHE_TYPES, check_magic

# Cache types the wrapper accepts: the reported ones, plus f32 for exact parity checks of F32 exports
# (llama.cpp's default cache is F16, which alone moves logits by ~1e-3).
CONTEXT_KV_TYPES = (*KV_CACHE_TYPES, "f32")
_LOCK = threading.Lock()
_LINES: list[str] = []
_CALLBACK = None  # the ctypes callback object must outlive the C side's pointer to it


def lib():
    """llama_cpp, with the backend initialised and llama-cpp-python's own logger kept quiet."""
    try:
        import llama_cpp  # llama_cpp is optional: imported only when used
    except ImportError:  # pragma: no cover - the gguf extra is part of the install
        raise SlmError("llama-cpp-python is not installed: `pip install 'slm-lab[gguf]'`") from None
    llama_cpp.llama_backend_init()
    from llama_cpp import _logger  # llama_cpp is optional: imported only when used

    if _logger.logger.level == 0:  # NOTSET would echo every llama.cpp line (e.g. context teardown) to stderr
        _logger.set_verbose(False)
    return llama_cpp


def _collect(level, text, user_data):  # ggml log callback: keep the lines while we listen
    _LINES.append(text.decode("utf-8", errors="replace"))


@contextlib.contextmanager
def captured_logs():
    """Collect llama.cpp's log lines inside the block, then give logging back to llama-cpp-python's
    handler."""
    global _CALLBACK
    L = lib()
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
            from llama_cpp import _logger  # llama_cpp is optional: imported only when used

            L.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def last_error(lines: list[str]) -> str:
    """The last line of a llama.cpp log that names an error or a failure."""
    errs = [ln.strip() for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    return errs[-1] if errs else "no reason logged"


# ---- what llama.cpp allocates (llama-model.cpp load_tensors, llama-kv-cache.cpp, llama-context.cpp) --------
_MIB = 1024 * 1024
_RE_MODEL = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_RE_KV = re.compile(r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers"
                    r".*K \((\w+)\):\s+([\d.]+) MiB, V \((\w+)\):\s+([\d.]+) MiB")
_RE_BUF = re.compile(r"(?:llama_context|sched_reserve):\s+(\S+)\s+(compute|output) buffer size "
                     r"=\s+([\d.]+) MiB")


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


# ---- the context wrapper -----------------------------------------------------------------------------------
class LlamaCpp:
    """One GGUF loaded with one context: timed prefill/decode (profiling's protocol) and logits, greedy tokens
    and token ids (validation, scoring).

    threads: on a CPU shared with other jobs use 1: ggml's threads wait for each other at every op, and a
    descheduled thread stalls each step (measured here: 0.4 s per token on a tiny model).
    kv_type: f16 (llama.cpp's default), q8_0/q4_0 (need flash attention, switched on), or f32 for exact
    parity.
    flash_attn: None leaves llama.cpp's choice (auto); export validation turns it off, as llama-cpp-python's
    `Llama` does by default, so its figures stay those of earlier runs.
    """

    name = "llama.cpp"

    def __init__(self, gguf: Path | str, n_ctx: int, threads: int, kv_type: str = "f16", n_batch: int = 2048,
                 n_ubatch: int = 512, seed: int = 0, gpu_layers: int = 0, flash_attn: bool | None = None):
        if kv_type not in CONTEXT_KV_TYPES:
            raise SlmError(f"unknown KV cache type {kv_type!r}: choose one of {', '.join(CONTEXT_KV_TYPES)}")
        self.path = check_magic(gguf)
        self.L = lib()
        self.threads, self.n_batch, self.kv_type = threads, n_batch, kv_type
        self.rng = np.random.default_rng(seed)
        self._states: dict[int, ctypes.Array] = {}  # depth → saved sequence state
        lines = self._load_model(gpu_layers)
        if n_ctx > self.n_ctx_train:
            self.close()
            raise SlmError(f"context {n_ctx} is above the model's max context {self.n_ctx_train}: ask for "
                           "less (slm profile: lower --pp/--depths/--tg)")
        lines += self._new_context(n_ctx, n_ubatch, flash_attn)
        self.mem = parse_memory(lines)
        self.mem["file_bytes"] = self.path.stat().st_size

    def _load_model(self, gpu_layers: int) -> list[str]:
        L = self.L
        with captured_logs() as lines:
            mp = L.llama_model_default_params()
            # a Jetson's GPU when the wheel was built with CUDA; ignored on CPU builds
            mp.n_gpu_layers = gpu_layers
            self.model = L.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise SlmError(f"llama.cpp cannot load {self.path.name} ({last_error(lines)}): re-export the "
                           "GGUF or update llama-cpp-python")
        self.n_ctx_train = L.llama_model_n_ctx_train(self.model)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.bos = L.llama_vocab_bos(self.vocab) if L.llama_vocab_get_add_bos(self.vocab) else -1
        return lines

    def _new_context(self, n_ctx: int, n_ubatch: int, flash_attn: bool | None) -> list[str]:
        L = self.L
        with captured_logs() as lines:
            cp = L.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, self.n_batch, min(n_ubatch, self.n_batch)
            cp.n_threads = cp.n_threads_batch = self.threads
            cp.no_perf = False  # llama_perf_context needs the counters on
            if self.kv_type != "f16":
                cp.type_k = cp.type_v = getattr(L, f"GGML_TYPE_{self.kv_type.upper()}")
            if flash_attn is not None:
                cp.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                      else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
            if self.kv_type in ("q8_0", "q4_0"):  # a quantized V cache needs flash attention in llama.cpp
                cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
            self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            self.close()
            hint = (f"; a {self.kv_type} KV cache also needs a head size that is a multiple of 32 (use f16 "
                    "for smaller heads)" if self.kv_type in ("q8_0", "q4_0") else "")
            raise SlmError(f"llama.cpp cannot create a context of {n_ctx} tokens for {self.path.name} "
                           f"({last_error(lines)}): lower the context or free memory{hint}")
        self.n_ctx = L.llama_n_ctx(self.ctx)
        return lines

    # ---- the protocol (profiling/protocol.py) --------------------------------------------------------------
    def _random_tokens(self, n: int, first_bos: bool):
        toks = self.rng.integers(0, self.n_vocab, n, dtype=np.int32)
        if first_bos and self.bos >= 0 and n:
            toks[0] = self.bos
        return (self.L.llama_token * n)(*toks.tolist())

    def _prompt(self, n: int, first: bool = True) -> None:
        """Decode n random tokens in batches of n_batch, as llama-bench's test_prompt does."""
        L, done = self.L, 0
        while done < n:
            k = min(n - done, self.n_batch)
            arr = self._random_tokens(k, first and done == 0)
            if L.llama_decode(self.ctx, L.llama_batch_get_one(arr, k)) != 0:
                raise SlmError(f"llama_decode failed at {done + k} tokens (context {self.n_ctx}): lower the "
                               "lengths")
            done += k
        L.llama_synchronize(self.ctx)

    def _perf_ms(self) -> float:
        d = self.L.llama_perf_context(self.ctx)
        return d.t_p_eval_ms + d.t_eval_ms

    def _clear(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), False)

    def _at_depth(self, depth: int) -> None:
        """Empty cache, then `depth` tokens in it: decoded once, restored from a saved sequence state
        afterwards (llama-bench does the same, so repetitions at depth do not pay for the fill again)."""
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
        toks = self._random_tokens(n, not depth)
        one = [(L.llama_token * 1)(t) for t in toks]  # built before the clock starts
        L.llama_perf_context_reset(self.ctx)
        for i in range(n):  # one token per step, as llama-bench's test_gen
            if L.llama_decode(self.ctx, L.llama_batch_get_one(one[i], 1)):
                raise SlmError(f"llama_decode failed at depth {depth + i}: lower --depths/--tg")
            L.llama_synchronize(self.ctx)
        return self._perf_ms() / 1e3

    def stream(self, prompt: int, n: int) -> list[float]:
        """What an app sees streaming greedy tokens after a `prompt`-token random prompt on an empty cache:
        wall seconds from submitting the prompt to the first token id, then between each next token id (n
        times in all). Each token is picked (argmax of the last logits) and fed back, as a chat loop does."""
        L = self.L
        self._clear()
        toks = self._random_tokens(prompt, True)
        parts = [(L.llama_token * len(p))(*p.tolist()) for p in np.array_split(
            toks, max(1, -(-prompt // self.n_batch)))]
        one = (L.llama_token * 1)()
        out, t = [], time.perf_counter()
        for arr in parts:
            if L.llama_decode(self.ctx, L.llama_batch_get_one(arr, len(arr))) != 0:
                raise SlmError(f"llama_decode failed on a {prompt}-token prompt (context {self.n_ctx}): "
                               "lower --latency-prompt")
        for i in range(n):
            ptr = L.llama_get_logits_ith(self.ctx, -1)
            one[0] = int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())
            now = time.perf_counter()
            out.append(now - t)
            t = now
            if i + 1 < n and L.llama_decode(self.ctx, L.llama_batch_get_one(one, 1)) != 0:
                raise SlmError(f"llama_decode failed at {prompt + i} tokens: lower --latency-prompt/--tg")
        return out

    def memory(self) -> dict:
        return dict(self.mem)

    # ---- quality: token ids, logits, greedy tokens ---------------------------------------------------------
    def tokenize(self, text: str, special: bool = False, add_bos: bool = True) -> list[int]:
        """The GGUF's own token ids; BOS only if the file asks for it (and `add_bos`); `special`: parse
        <|im_start|>-style tokens."""
        L, b = self.L, text.encode()
        buf = (L.llama_token * (len(b) + 8))()
        n = L.llama_tokenize(self.vocab, b, len(b), buf, len(buf), add_bos, special)
        if n < 0:
            raise SlmError("text too long to tokenize")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (llama.cpp's token_to_piece; special tokens as empty)."""
        L, buf = self.L, ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:  # longer than the buffer: -n is the size needed
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def is_end(self, token: int) -> bool:
        """Whether a token ends generation (EOS, EOT, <|im_end|>: llama.cpp's end-of-generation set)."""
        return bool(self.L.llama_vocab_is_eog(self.vocab, token))

    def _eval(self, tokens: list[int], start: int) -> np.ndarray:
        """Decode `tokens` at positions start… (every position's logits kept), in batches of n_batch."""
        L, out = self.L, []
        for i in range(0, len(tokens), self.n_batch):
            part = tokens[i:i + self.n_batch]
            batch = L.llama_batch_init(len(part), 0, 1)
            try:
                for j, t in enumerate(part):
                    batch.token[j], batch.pos[j], batch.n_seq_id[j] = t, start + i + j, 1
                    batch.seq_id[j][0], batch.logits[j] = 0, True
                batch.n_tokens = len(part)
                if L.llama_decode(self.ctx, batch) != 0:
                    raise SlmError(f"llama_decode failed on {len(part)} tokens (context {self.n_ctx}): use "
                                   "shorter text")
                ptr = L.llama_get_logits(self.ctx)
                out.append(np.ctypeslib.as_array(ptr, shape=(len(part), self.n_vocab)).astype(np.float32))
            finally:
                L.llama_batch_free(batch)
        return np.concatenate(out)

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits at every position of `tokens` from an empty cache (len × vocab, float32)."""
        if len(tokens) > self.n_ctx:
            raise SlmError(f"{len(tokens)} tokens exceed the context {self.n_ctx}: score shorter windows")
        self._clear()
        return self._eval(list(tokens), 0)

    def greedy(self, tokens: list[int], n: int = 32, until=None) -> list[int]:
        """n greedy tokens after `tokens` (argmax each step, no stop on EOS, so runs compare token for
        token); `until(tokens so far)` → True stops earlier (generation with stop sequences)."""
        last = self.logits(tokens)[-1]
        out: list[int] = []
        for i in range(n):
            out.append(int(np.argmax(last)))
            if until is not None and until(out):
                break
            if i + 1 < n:
                last = self._eval([out[-1]], len(tokens) + i)[-1]
        return out

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
