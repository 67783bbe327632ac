"""What llama.cpp itself keeps resident: a bare subprocess's RSS over its own baseline.

The profiling process also holds torch, transformers and every other import, so its RSS says little about
the model. A child that imports only llama.cpp's library measures its RSS (baseline), loads the GGUF and makes
a context, runs a prompt and some decode steps so that the weights' pages are touched and the compute buffers
used, and reports its peak RSS (Linux VmHWM, reset after the baseline). Peak − baseline is the model, KV cache
and compute buffers as the operating system sees them — the check on llama.cpp's logged allocations and on
`slm plan`'s estimate. Written by hand: llama.cpp reports allocations, not resident pages.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from slm.errors import SlmError


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _child(gguf: str, n_ctx: int, threads: int, prompt: int, steps: int) -> dict:
    """Runs in the subprocess: baseline, load, use, peak (bytes)."""
    from .llamacpp import LlamaCpp, lib  # llama.cpp: imported in the child only, away from the parent's torch

    lib()  # the shared library mapped before the baseline: its code is not the model's memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS") * 1024
    with LlamaCpp(gguf, n_ctx, threads) as b:
        loaded = _status_kib("VmRSS") * 1024
        b.prefill(min(prompt, n_ctx - steps))
        b.decode(steps, min(prompt, n_ctx - steps))
        mem = b.memory()
    return {"baseline_rss": base, "loaded_rss": loaded, "peak_rss": _status_kib("VmHWM") * 1024,
            "logged": {k: mem.get(k, 0.0) for k in ("weights", "kv_cache", "compute", "output")}}


def measure_rss(gguf: Path | str, n_ctx: int, threads: int = 1, prompt: int = 512, steps: int = 16,
                timeout_s: float = 600) -> dict:
    """Run _child in a fresh interpreter; {"baseline_rss", "loaded_rss", "peak_rss", "over_baseline",
    "logged": llama.cpp's own allocation lines, "n_ctx"}. Linux only (/proc)."""
    if not Path("/proc/self/clear_refs").exists():
        raise SlmError("llama.cpp's resident memory needs Linux's /proc (clear_refs, VmHWM): not available "
                       "here")
    code = ("import json, sys; from slm.quant.llamacpp_rss import _child; "
            "print(json.dumps(_child(*json.loads(sys.argv[1]))))")
    arg = json.dumps([str(gguf), n_ctx, threads, prompt, steps])
    p = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"llama.cpp memory subprocess failed (rc={p.returncode}): {tail[:300]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return {**out, "over_baseline": out["peak_rss"] - out["baseline_rss"], "n_ctx": n_ctx,
            "prompt": prompt, "steps": steps, "threads": threads}
