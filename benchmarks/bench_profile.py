"""Benchmarks for `slm profile` (placeholder; filled in below)."""
from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "slm"))
LLAMA_CPP_PYTHON = "0.3.36"  # the version whose vendored llama.cpp our llama_cpp wheel was built from


def build_llama_bench(jobs: int = 2) -> Path:
    """Build llama.cpp's own `llama-bench` from the llama-cpp-python sdist's vendored llama.cpp (cached)."""
    root = CACHE / "llama-bench"
    exe = root / "build" / "bin" / "llama-bench"
    if exe.is_file():
        return exe
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.is_file():
        subprocess.run([os.sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(root)], check=True)
    src = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if not src.is_dir():
        with tarfile.open(sdist) as tf:
            tf.extractall(root, filter="data")
    subprocess.run(["cmake", "-S", str(src), "-B", str(root / "build"), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF"], check=True)
    subprocess.run(["cmake", "--build", str(root / "build"), "--target", "llama-bench", "-j", str(jobs)], check=True)
    return exe
