"""onnxruntime-genai backend (an ONNX folder made by its model builder, with genai_config.json), same
protocol.

Prefill = append_tokens of the prompt to a fresh generator (the first logits come out of it); decode = after
appending `depth` tokens (untimed), n × generate_next_token with greedy search. Wall-clock timing.
"""

from __future__ import annotations

import gc
import glob
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from slm.errors import SlmError
from slm.profiling.protocol import Closing
from slm.record import read_record
from slm.spec import ModelSpec, check_supported, load_spec


def is_onnx_dir(p: Path) -> bool:
    return Path(p).is_dir() and (Path(p) / "genai_config.json").is_file()


class OrtGenai(Closing):
    name = "onnxruntime-genai"

    def __init__(self, folder: Path, threads: int, seed: int = 0):
        try:
            import onnxruntime_genai as og  # onnxruntime_genai is optional: imported only when used
        except ImportError:
            raise SlmError("onnxruntime-genai is not installed: `pip install 'slm-lab[onnx]'`") from None
        folder = Path(folder)
        if not is_onnx_dir(folder):
            raise SlmError(f"{folder} has no genai_config.json: pass a folder made by onnxruntime-genai's "
                           "model builder")
        cfg = json.loads((folder / "genai_config.json").read_text())
        self.vocab = cfg["model"]["vocab_size"]
        self.max_len = cfg["model"].get("context_length", 2048)
        self.og, self.threads, self.folder = og, threads, folder
        c = og.Config(str(folder))
        # the same thread count as the other backends (the builder leaves it to onnxruntime's default
        # otherwise)
        c.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                        "inter_op_num_threads": 1}}}}))
        try:
            self.model = og.Model(c)
        except Exception as e:
            raise SlmError(f"onnxruntime-genai cannot load {folder} ({str(e).splitlines()[0]})") from None
        self.rng = np.random.default_rng(seed)
        self._gens: dict = {}  # (depth, n) → generator holding `depth` tokens
        # weights on disk: the graph and its external data (int4 blocks, fp embeddings)
        self.weight_bytes = sum(f.stat().st_size for f in folder.iterdir() if ".onnx" in f.name)

    def _gen(self, total: int):
        p = self.og.GeneratorParams(self.model)
        p.set_search_options(max_length=min(total + 1, self.max_len), do_sample=False)
        return self.og.Generator(self.model, p)

    def _ids(self, n: int):
        return self.rng.integers(0, self.vocab, n, dtype=np.int32)

    def prefill(self, n: int, depth: int = 0) -> float:
        g = self._gen(depth + n)
        if depth:
            g.append_tokens(self._ids(depth))
        ids = self._ids(n)
        t = time.perf_counter()
        g.append_tokens(ids)
        return time.perf_counter() - t

    def decode(self, n: int, depth: int = 0) -> float:
        d = max(depth, 1)  # genai needs at least one token before generating
        key = (d, n)
        g = self._gens.pop(key, None)
        if g is None:
            g = self._gen(d + n)
            g.append_tokens(self._ids(d))
        t = time.perf_counter()
        for _ in range(n):
            g.generate_next_token()
        s = time.perf_counter() - t
        if hasattr(g, "rewind_to"):  # keep the filled prefix for the next repetition
            g.rewind_to(d)
            self._gens[key] = g
        return s

    def stream(self, prompt: int, n: int) -> list[float]:
        """Wall seconds from submitting a `prompt`-token random prompt to the first greedy token id, then
        between each next token id (n in all): the generator loop an app runs."""
        g = self._gen(prompt + n)
        ids = self._ids(prompt)
        out, t = [], time.perf_counter()
        g.append_tokens(ids)
        for _ in range(n):
            g.generate_next_token()
            g.get_next_tokens()
            now = time.perf_counter()
            out.append(now - t)
            t = now
        return out

    def memory(self) -> dict:
        return {"weights": self.weight_bytes}

    def op_profile(self, n_prompt: int, n_decode: int) -> dict:
        """onnxruntime's own profiler on a second model (genai_config session_options.enable_profiling; the
        JSON is written when the session ends): seconds per op_name of the "Node" events, the first model_run
        being the prefill (append_tokens) and the later ones single-token decode steps."""

        og = self.og
        with tempfile.TemporaryDirectory() as tmp:
            c = og.Config(str(self.folder))
            c.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": self.threads, "inter_op_num_threads": 1,
                "enable_profiling": f"{tmp}/ort"}}}}))
            model = og.Model(c)
            p = og.GeneratorParams(model)
            p.set_search_options(max_length=n_prompt + n_decode + 1, do_sample=False)
            g = og.Generator(model, p)
            g.append_tokens(self._ids(n_prompt))
            for _ in range(n_decode):
                g.generate_next_token()
            del g, p, model
            gc.collect()
            files = glob.glob(f"{tmp}/ort*.json")
            if not files:
                raise SlmError("onnxruntime wrote no profile: this onnxruntime-genai ignores "
                               "enable_profiling")
            events = json.loads(Path(files[0]).read_text())
        return {"phases": _ort_phases(events), "threads": self.threads,
                "how": "onnxruntime profiler (enable_profiling) node times per op type, "
                       "in a separate session"}

    def close(self) -> None:
        self.model = None


def _ort_phases(events: list) -> dict:
    """{prefill|decode: {op_name: seconds}} from onnxruntime's chrome-trace events (dur in µs)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    out: dict = {"prefill": {}, "decode": {}}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        ph = "prefill" if runs and e["ts"] <= runs[0][1] else "decode"
        op = e.get("args", {}).get("op_name", "?")
        out[ph][op] = out[ph].get(op, 0.0) + e["dur"] / 1e6
    return out


def spec_of(folder: Path) -> ModelSpec:
    """ModelSpec of an ONNX folder: its config.json, the HF model its export record names, or
    genai_config.json with the MLP width read from the graph's gate/up projection weights (the builder writes
    no config.json)."""

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return load_spec(folder)
    rec = read_record(folder.parent) or {}
    src = rec.get("result", {}).get("model")
    if src and (Path(src) / "config.json").is_file():
        return load_spec(src)
    d = json.loads((folder / "genai_config.json").read_text())["model"]
    dec = d["decoder"]
    mt = check_supported({"model_type": {"qwen2": "qwen2", "qwen3": "qwen3"}.get(d.get("type"), "llama")})
    hidden, heads = dec["hidden_size"], dec["num_attention_heads"]
    return ModelSpec(
        model_type=mt, layers=dec["num_hidden_layers"], hidden=hidden,
        intermediate=_mlp_width(folder, hidden), heads=heads,
        kv_heads=dec.get("num_key_value_heads") or heads, head_dim=dec.get("head_size") or hidden // heads,
        vocab=d["vocab_size"], max_context=d.get("context_length", 2048),
        tied=False,  # genai_config does not say: counted untied
        attention_bias=mt == "qwen2", qk_norm=mt == "qwen3",
        dtype="float32",  # as spec_from_config without a dtype
    )


def _mlp_width(folder: Path, hidden: int) -> int:
    import onnx  # onnx is optional: imported only when used

    m = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        if "mlp.up_proj" in t.name or "mlp.gate_proj" in t.name:
            dims = list(t.dims)  # fp MatMul: [in, out]; MatMulNBits: [out, blocks, bytes]
            return dims[1] if len(dims) == 2 else dims[0]
    return 4 * hidden  # not found: the classic transformer ratio (stated assumption)
