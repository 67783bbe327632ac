"""ONNX export through onnxruntime-genai's model builder.

Why the builder and not optimum-onnx: optimum-onnx 0.1.0 pins transformers < 4.58 and this project runs
transformers 5; the builder reads the HF checkpoint with the installed transformers, writes the graph with
onnxruntime-genai's own fused ops (GroupQueryAttention, MatMulNBits for int4) and the genai_config.json +
tokenizer files that onnxruntime-genai needs to run the folder. It runs in a subprocess: it prints a
progress line per tensor (kept in a log file) and its memory is returned when it exits.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from slm.errors import SlmError

PRECISIONS = ("int4", "int8", "fp16", "fp32")
EPS = ("cpu", "cuda")
# for the disk estimate (int4 has fp32 scales)
BYTES_PER_WEIGHT = {"int4": 0.6, "int8": 1.1, "fp16": 2.0, "fp32": 4.0}


def check_onnx(precisions: list[str], ep: str) -> list[str]:
    out = []
    for p in precisions:
        k = p.strip().lower()
        if k not in PRECISIONS:
            raise SlmError(f"unknown ONNX precision {p!r}: valid ones are {', '.join(PRECISIONS)}")
        if k not in out:
            out.append(k)
    if out and ep not in EPS:
        raise SlmError(f"unknown execution provider {ep!r}: valid ones are {', '.join(EPS)}")
    if out:
        for mod, pkg in (("onnxruntime_genai", "onnxruntime-genai"), ("onnx_ir", "onnx-ir"),
                         ("onnx", "onnx")):
            if importlib.util.find_spec(mod) is None:
                raise SlmError(f"--onnx needs the {pkg} package: pip install {pkg} (or slm-lab[onnx])")
    return out


def build_onnx(model_dir: Path, out_dir: Path, precision: str, ep: str, cache_dir: Path, log: Path,
               extra: dict | None = None) -> Path:
    """Run `python -m onnxruntime_genai.models.builder` into out_dir; its output goes to `log`.

    extra: the builder's `--extra_options` (algo_config, matmul_mixed_precision, block_size, …; builder.py's
    help)."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(out_dir),
           "-p", precision, "-e", ep, "-c", str(cache_dir)]
    if extra:
        cmd += ["--extra_options", *[f"{k}={v}" for k, v in extra.items()]]
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not (out_dir / "genai_config.json").is_file():
        tail = log.read_text(errors="replace")[-800:].strip().splitlines()
        raise RuntimeError(f"onnxruntime-genai builder failed for {precision} (rc={rc}): "
                           f"{tail[-1] if tail else ''}")
    return out_dir


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
