"""Wall time and peak RSS of `slm export --gguf q8_0,q6_k,q4_k_m` vs llama.cpp's own converter + quantizer.

    .venv/bin/python benchmarks/bench_export.py [--model DIR] [--llama-cpp DIR] [--threads 2] [--validate]

llama.cpp's path is the documented one: `convert_hf_to_gguf.py --outtype f16` (and f32, to compare like with
like: slm quantizes from an F32 intermediate), then the quantizer once per type. The quantizer is
llama.cpp's `llama_model_quantize` called through llama-cpp-python in a fresh process per type (the same code
as the `llama-quantize` binary, which the wheel does not ship). The converter comes from the
llama-cpp-python sdist (vendor/llama.cpp), fetched with `pip download` into ~/.cache/slm-lab when not given.
Every step runs in its own process; peak RSS is the largest ru_maxrss of any step (os.wait4).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

TYPES = ["q8_0", "q6_k", "q4_k_m"]
QUANTIZE = ("import sys, llama_cpp as L; p = L.llama_model_quantize_default_params(); "
            "p.nthread = int(sys.argv[4]); "
            "p.ftype = getattr(L, 'LLAMA_FTYPE_MOSTLY_' + sys.argv[3].upper()); "
            "sys.exit(L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))")


def run(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one process; raises if it fails."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {err.decode(errors='replace')[-800:]}")
    return time.perf_counter() - t, ru.ru_maxrss * 1024


def llama_cpp_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    import llama_cpp

    cache = Path.home() / ".cache" / "slm-lab" / f"llama-cpp-python-{llama_cpp.__version__}"
    src = cache / f"llama_cpp_python-{llama_cpp.__version__}" / "vendor" / "llama.cpp"
    if not (src / "convert_hf_to_gguf.py").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={llama_cpp.__version__}", "-d", str(cache)], check=True)
        with tarfile.open(next(cache.glob("llama_cpp_python-*.tar.gz"))) as tar:
            tar.extractall(cache, filter="data")
    return src


def bench_slm(model: Path, work: Path, threads: int, validate: bool) -> dict:
    out = work / ("slm-validated" if validate else "slm")
    cmd = [sys.executable, "-c", "import sys; from slm.cli import main; sys.exit(main())",
           "export", str(model), "--gguf", ",".join(TYPES), "-o", str(out), "--threads", str(threads)]
    if not validate:
        cmd.append("--no-validate")
    wall, rss = run(cmd)
    return {"wall": wall, "rss": rss,
            "sizes": {t: (out / f"{model.name}-{t}.gguf").stat().st_size for t in TYPES}}


def bench_llama_cpp(model: Path, work: Path, threads: int, conv: Path, outtype: str) -> dict:
    base = work / f"llama-{outtype}.gguf"
    env = {"PYTHONPATH": str(conv / "gguf-py")}  # the converter's own gguf-py, as its README says
    wall, rss = run([sys.executable, str(conv / "convert_hf_to_gguf.py"), str(model), "--outtype", outtype,
                     "--outfile", str(base)], env)
    sizes = {}
    for t in TYPES:
        dst = work / f"llama-{outtype}-{t}.gguf"
        w, r = run([sys.executable, "-c", QUANTIZE, str(base), str(dst), t, str(threads)])
        wall, rss = wall + w, max(rss, r)
        sizes[t] = dst.stat().st_size
    return {"wall": wall, "rss": rss, "sizes": sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model",
                    help="HF checkpoint (default: the bundled SmolLM2-135M-Instruct, imported once)")
    ap.add_argument("--llama-cpp", help="a llama.cpp source tree with convert_hf_to_gguf.py")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--validate", action="store_true", help="also time slm export with validation on")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        model = Path(a.model) if a.model else work / "smollm2-135m"
        if not a.model:
            from slm.gguf_import import import_gguf

            import_gguf(None, model)
        f32_bytes = sum(p.stat().st_size for p in model.glob("*.safetensors"))
        conv = llama_cpp_dir(a.llama_cpp)
        rows = [("slm export (F32 intermediate, no validation)", bench_slm(model, work, a.threads, False)),
                ("llama.cpp convert --outtype f16 + quantize",
                 bench_llama_cpp(model, work, a.threads, conv, "f16")),
                ("llama.cpp convert --outtype f32 + quantize",
                 bench_llama_cpp(model, work, a.threads, conv, "f32"))]
        if a.validate:
            rows.append(("slm export with validation", bench_slm(model, work, a.threads, True)))
        print(f"\nmodel {model} — f32 weights {f32_bytes / 2**20:.0f} MiB; types {', '.join(TYPES)}; "
              f"{a.threads} threads; host CPUs {os.cpu_count()}\n")
        print(f"| {'method':<46} | wall (s) | peak RSS (MiB) | RSS / f32 model | "
              + " | ".join(f"{t} (MiB)" for t in TYPES) + " |")
        print("|" + "-" * 48 + "|---------:|---------------:|----------------:|"
              + "|".join("-" * (len(t) + 9) + ":" for t in TYPES) + "|")
        for name, r in rows:
            print(f"| {name:<46} | {r['wall']:8.1f} | {r['rss'] / 2**20:14.0f} | "
                  f"{r['rss'] / f32_bytes:15.2f} | "
                  + " | ".join(f"{r['sizes'][t] / 2**20:{len(t) + 6}.1f}" for t in TYPES) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
