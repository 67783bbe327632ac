"""Where the time goes: each backend's operators timed in a separate diagnostic pass (`slm profile --ops`),
one prefill and a few single-token decode steps, their time shares grouped by operator kind per phase.

- llama.cpp: the eval callback (cb_eval; slm.quant.llamacpp_ops.op_profile) times every ggml graph
  node. The callback splits the graph node by node, so the pass runs apart from the timed tests, on 1 CPU
  thread by default (with more, ggml's per-node thread hand-off — paid at every node once the graph is split —
  swamps a small model's nodes on a shared host; measured here: 8 s instead of 1 s for a 128-token prefill of
  the 135M model on 2 threads).
- torch: torch.profiler's per-op self CPU time (key_averages' self time, so aten::linear is not counted on top
  of its aten::addmm); ops inside an RMSNorm module or transformers' apply_rotary_pos_emb are counted as norm
  / rope through record_function ranges this pass opens around them.
- onnxruntime-genai: onnxruntime's own profiler (session_options.enable_profiling in genai_config, written
  when the session ends): "Node" events' dur per op_name; the first model_run is the prefill, the later ones
  decode steps.

The SLM survey's finding to compare with: mul_mat_vec (matrix × vector: decode's weight matmuls) ~70 % of
decode time on a Jetson.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

from slm.quant.llamacpp_ops import op_profile  # llama-cpp-python: only when --ops runs on llama.cpp

KINDS = ("matmul", "attention", "norm", "rope", "elementwise", "other")  # the chart's stacking order
# the diagnostic pass: one prefill of this many tokens, then decode steps
PASS = {"n_prompt": 128, "n_decode": 16}
_ELEMENTWISE = {"ADD", "SUB", "MUL", "DIV", "SCALE", "SQR", "SQRT", "SILU", "GELU", "GELU_QUICK", "SWIGLU",
                "GEGLU", "RELU", "TANH", "EXP", "NEG", "SIGMOID", "ADD1", "ACC", "CLAMP", "GLU", "ADD_ID"}


def ggml_kind(op: str, name: str = "") -> str:
    """A ggml node's kind from its op (ggml_op_desc) and tensor name (llama.cpp's graph names: kq, kqv, *_norm
    …)."""
    if op in ("MUL_MAT", "MUL_MAT_ID", "OUT_PROD"):
        return "attention" if name.startswith(("kq", "kqv")) else "matmul"
    if op in ("SOFT_MAX", "FLASH_ATTN_EXT", "SET_ROWS", "CPY"):  # SET_ROWS/CPY: writes into the KV cache
        return "attention"
    # the norm's weight multiply is named *_norm
    if "NORM" in op or (op in ("MUL", "ADD") and "norm" in name):
        return "norm"
    if op.startswith("ROPE"):
        return "rope"
    return "elementwise" if op in _ELEMENTWISE else "other"


def torch_kind(op: str) -> str:
    """An aten op's kind by name (ranges opened by this pass take precedence, see torch_ops)."""
    o = op.removeprefix("aten::")
    if o in ("mm", "addmm", "bmm", "matmul", "linear", "baddbmm", "mv", "addmv", "dot"):
        return "matmul"
    if "attention" in o or "softmax" in o:
        return "attention"
    if "norm" in o or o in ("pow", "mean", "rsqrt"):
        return "norm"
    if o in ("cos", "sin"):
        return "rope"
    if o in ("add", "add_", "mul", "mul_", "sub", "div", "neg", "silu", "gelu", "exp", "tanh", "sigmoid",
             "clamp"):
        return "elementwise"
    return "other"


def onnx_kind(op: str) -> str:
    """An onnxruntime node's kind from its op_name."""
    if op in ("MatMul", "MatMulNBits", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "FusedMatMul"):
        return "matmul"
    if "Attention" in op or op == "Softmax":
        return "attention"
    if "Norm" in op:
        return "norm"
    if "Rotary" in op:
        return "rope"
    if op in ("Add", "Mul", "Sub", "Div", "Sigmoid", "QuickGelu", "FastGelu", "Gelu", "Neg", "Pow", "Sqrt",
              "Tanh"):
        return "elementwise"
    return "other"


def phase_of(times: dict[str, float], kind: Callable[[str], str]) -> dict:
    """One phase's summary: seconds, share per kind (summing to 1), and the five costliest ops with their
    shares."""
    total = sum(times.values()) or 1.0
    by = dict.fromkeys(KINDS, 0.0)
    for op, s in times.items():
        by[kind(op)] += s
    top = sorted(times.items(), key=lambda kv: -kv[1])[:5]
    return {"seconds": round(sum(times.values()), 6), "shares": {k: v / total for k, v in by.items()},
            "top": [[op, s / total] for op, s in top]}


def llamacpp_ops(b, n_prompt: int, n_decode: int, threads: int = 1) -> dict:

    raw = op_profile(b, n_prompt, n_decode, threads)
    phases = {ph: phase_of({f"{op} {name}".strip(): s for (op, name), s in d.items()},
                           lambda k: ggml_kind(*(k.split(" ", 1) + [""])[:2])) for ph, d in raw.items()}
    return {"phases": phases, "threads": threads,
            "how": "llama.cpp eval callback (cb_eval) timing every graph node in a separate pass on "
                   f"{threads} thread{'s' if threads > 1 else ''}; layout-only nodes (view, reshape, "
                   "permute, transpose) are not computed and not counted"}


@contextlib.contextmanager
def _torch_ranges(model):
    """record_function ranges around RMSNorm modules and transformers' apply_rotary_pos_emb, removed
    afterwards."""

    import torch  # torch: deferred, a heavy import

    hooks, patched = [], []
    for m in model.modules():
        if "RMSNorm" in type(m).__name__:
            def pre(mod, args):
                mod._slm_rf = torch.autograd.profiler.record_function("slm::norm")
                mod._slm_rf.__enter__()

            def post(mod, args, out):
                mod._slm_rf.__exit__(None, None, None)

            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    mod = sys.modules.get(type(model).__module__)
    fn = getattr(mod, "apply_rotary_pos_emb", None)
    if fn is not None:
        def rope(*a, **k):
            with torch.autograd.profiler.record_function("slm::rope"):
                return fn(*a, **k)

        mod.apply_rotary_pos_emb = rope
        patched.append((mod, fn))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for mod, fn in patched:
            mod.apply_rotary_pos_emb = fn


def _torch_times(prof) -> dict[str, float]:
    """Self CPU seconds per op, ops under an slm:: range (innermost) filed under '<kind>: op'."""
    out: dict[str, float] = {}
    for e in prof.events():
        if e.name.startswith("slm::"):
            continue
        p, rng = e.cpu_parent, None
        while p is not None and rng is None:
            rng = p.name[5:] if p.name.startswith("slm::") else None
            p = p.cpu_parent
        key = f"{rng}: {e.name}" if rng and torch_kind(e.name) != "matmul" else e.name
        out[key] = out.get(key, 0.0) + e.self_cpu_time_total / 1e6
    return out


def _torch_kind_of_key(k: str) -> str:
    head, _, op = k.partition(": ")
    return head if op and head in KINDS else torch_kind(k)


def torch_ops(b, n_prompt: int, n_decode: int) -> dict:
    from torch.profiler import ProfilerActivity, profile  # torch: deferred, a heavy import

    phases = {}
    with b.torch.inference_mode(), _torch_ranges(b.model):
        cache = b._fill(0)
        for ph, steps in (("prefill", [n_prompt]), ("decode", [1] * n_decode)):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for n in steps:
                    b.model(b._ids(n), **{b._kv: cache}, use_cache=True, logits_to_keep=1)
            phases[ph] = phase_of(_torch_times(prof), _torch_kind_of_key)
    return {"phases": phases, "threads": b.threads,
            "how": "torch.profiler self CPU time per aten op (norm and rope through record_function ranges "
                   "around RMSNorm modules and apply_rotary_pos_emb), in a separate pass"}


def breakdown(name: str, b, n_prompt: int, n_decode: int) -> dict | None:
    """The operator breakdown of one loaded backend (None for a backend with no operator profiler)."""
    if name == "llama.cpp":
        out = llamacpp_ops(b, n_prompt, n_decode)
    elif name.startswith("torch"):
        out = torch_ops(b, n_prompt, n_decode)
    elif name == "onnxruntime-genai":
        out = b.op_profile(n_prompt, n_decode)
        out["phases"] = {ph: phase_of(d, onnx_kind) for ph, d in out["phases"].items()}
    else:
        return None
    return {**out, "n_prompt": n_prompt, "n_decode": n_decode}
