"""Where llama.cpp's time goes: one diagnostic pass that times every ggml graph node through the eval
callback.

Kept apart from the context wrapper (quant/llamacpp.py) because it serialises the graph and must never run
during the timed tests; profiling/ops.py groups its nodes into operator kinds.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

from slm.errors import SlmError

from .llamacpp import captured_logs


def op_profile(llm, n_prompt: int, n_decode: int = 16, threads: int | None = None) -> dict:
    """Seconds per graph node kind, {phase: {(ggml op, tensor name): s}}, for one prefill of n_prompt tokens
    and n_decode single-token steps, timed through llama.cpp's eval callback (llama.h: cb_eval in
    llama_context_params, a ggml_backend_sched_eval_callback, as examples/eval-callback uses it) in a second
    context. Answering `ask` with true for every node makes ggml_backend_sched compute one node per split: a
    node's time runs from the end of its ask call to its tell call, after a 1-byte ggml_backend_tensor_get so
    a GPU has finished it. This serialises the graph, so it is a separate diagnostic pass and never runs
    during the timed tests. `threads`: the pass's CPU threads (default the wrapper's); every node then pays
    ggml's thread hand-off."""

    L, g = llm.L, ctypes.CDLL(str(Path(llm.L.__file__).parent / "lib" / "libggml-base.so"))
    g.ggml_op_desc.restype = g.ggml_get_name.restype = ctypes.c_char_p
    g.ggml_op_desc.argtypes = g.ggml_get_name.argtypes = g.ggml_nbytes.argtypes = [ctypes.c_void_p]
    g.ggml_nbytes.restype = ctypes.c_size_t
    g.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    acc: dict = {"prefill": {}, "decode": {}}
    st, byte = {"t": 0.0, "phase": "prefill"}, ctypes.create_string_buffer(1)
    layout = {"NONE", "VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"}  # no compute in ggml: not timed

    def cb(t, ask, _):
        op = g.ggml_op_desc(t).decode()
        if not ask and op not in layout:
            if g.ggml_nbytes(t):
                g.ggml_backend_tensor_get(t, byte, 0, 1)  # synchronises a GPU backend; a memcpy on CPU
            name = g.ggml_get_name(t).decode().rsplit("-", 1)[0]
            key = (op, "" if name.startswith("node_") else name)
            d = acc[st["phase"]]
            d[key] = d.get(key, 0.0) + time.perf_counter() - st["t"]
        st["t"] = time.perf_counter()
        return True

    fn = L.ggml_backend_sched_eval_callback(cb)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = llm.n_ctx, llm.n_batch, min(512, llm.n_batch)
    cp.n_threads = cp.n_threads_batch = threads or llm.threads
    cp.cb_eval, cp.cb_eval_user_data = fn, None
    with captured_logs():
        ctx = L.llama_init_from_model(llm.model, cp)
    if not ctx:
        raise SlmError("llama.cpp cannot create the operator-profiling context: lower the prompt length")
    try:
        toks = llm._random_tokens(n_prompt + n_decode, True)
        if L.llama_decode(ctx, L.llama_batch_get_one(toks, n_prompt)):
            raise SlmError(f"llama_decode failed on {n_prompt} tokens while profiling operators")
        st["phase"] = "decode"
        for i in range(n_decode):
            one = (L.llama_token * 1)(toks[n_prompt + i])
            if L.llama_decode(ctx, L.llama_batch_get_one(one, 1)):
                raise SlmError("llama_decode failed while profiling operators")
    finally:
        L.llama_free(ctx)
    return acc
