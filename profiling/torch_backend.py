"""torch backend: the HF checkpoint itself through transformers (CPU; CUDA when present), same protocol.

Prefill is one forward over the prompt with a fresh cache; decode first fills a DynamicCache with `depth`
tokens (untimed), then times single-token forwards that extend it. Wall-clock (perf_counter) timing, with
torch.cuda.synchronize on GPU so queued kernels are counted.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from slm.profiling.protocol import Closing


class Torch(Closing):
    name = "torch"

    def __init__(self, model_dir: Path, threads: int, device: str = "auto", dtype: str = "float32",
                 seed: int = 0):
        import torch  # torch: deferred, a heavy import

        from slm.io import cache_kwarg, load_model  # torch: deferred, a heavy import

        self.torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if self.device == "cpu":
            torch.set_num_threads(threads)
        self.model = load_model(model_dir, dtype=dtype).to(self.device).eval()
        self._kv = cache_kwarg(self.model)
        self.vocab = self.model.config.vocab_size
        self.rng = np.random.default_rng(seed)
        self._caches: dict = {}  # depth → DynamicCache holding `depth` tokens
        self.name = f"torch-{self.device}"
        self.threads = threads
        self.dtype = dtype

    def _ids(self, n: int):
        return self.torch.as_tensor(self.rng.integers(0, self.vocab, (1, n)), device=self.device)

    def _sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def _fill(self, n: int):
        from transformers import DynamicCache  # transformers: deferred, a heavy import

        cache = DynamicCache()
        if n:
            self.model(self._ids(n), **{self._kv: cache}, use_cache=True)
        return cache

    def prefill(self, n: int, depth: int = 0) -> float:
        with self.torch.inference_mode():
            cache = self._fill(depth)
            ids = self._ids(n)
            self._sync()
            t = time.perf_counter()
            self.model(ids, **{self._kv: cache}, use_cache=True, logits_to_keep=1)
            self._sync()
            return time.perf_counter() - t

    def decode(self, n: int, depth: int = 0) -> float:
        with self.torch.inference_mode():
            # filled once per depth, cropped back to it after each run (as llama-bench restores its saved
            # state)
            cache = self._caches.get(depth) or self._fill(depth)
            ids = [self._ids(1) for _ in range(n)]
            self._sync()
            t = time.perf_counter()
            for x in ids:
                self.model(x, **{self._kv: cache}, use_cache=True)
            self._sync()
            s = time.perf_counter() - t
            if depth:
                cache.crop(-n)  # drop the n decoded tokens (transformers 5 takes a negative count)
                self._caches[depth] = cache
            return s

    def memory(self) -> dict:
        out = {"weights": sum(p.numel() * p.element_size() for p in self.model.parameters())}
        if self.device == "cuda":
            out["gpu_peak"] = self.torch.cuda.max_memory_allocated()
        return out

    def close(self) -> None:
        self.model = None
