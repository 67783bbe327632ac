"""Bad inputs, as a careless or hostile user gives them, end in one line and lose nothing.

One table. Each row drives one reproduction through the CLI in this process (`slm.cli.main`), and the test
asserts the contract every verb keeps: exit code 2; stderr exactly one line, `error: …`, holding the row's
words (the last of warnings and progress, for a row whose command is valid until its fault); no traceback;
every file under the row's folder byte-identical afterwards (the inputs untouched) and nothing new there (no
output folder, no `.tmp-`/`.lock` left) — except what the row says a run may keep.

To add a row: `Row(id, argv, words)` where `argv(w)` builds the command line from a Workspace `w`: `w.M` a
tiny model with a tokenizer, `w.D` data prepared from it, `w.out` an output path that does not exist,
`w.file(name, text)` / `w.dir(name)` more inputs, `w.hold_lock(path)` a live process holding the lock of an
output. `fault(monkeypatch)` makes the environment fail during the run (a full disk: the write path raises
what the OS raises when no space is left, after some bytes went out).
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from slm.cli import main
from tests.conftest import make_tiny
from tests.train.conftest import VOCAB, save_byte_tokenizer, write_texts

TRAIN = ["steps=2", "seq_len=48", "global_batch=2", "micro_batch=2", "trainable=full", "progress=false",
         "report=false", "eval=false"]


class Workspace:
    """A row's folder: a tiny model M (with a byte tokenizer), data D prepared from it, and whatever inputs
    the row adds; everything under `root` is hashed before and after the command."""

    def __init__(self, root: Path, template: Path):
        self.root = root
        self.M, self.D = root / "M", root / "D"
        shutil.copytree(template / "M", self.M)
        shutil.copytree(template / "D", self.D)
        shutil.copy2(template / "m.gguf", root / "m.gguf")
        self.out = root / "out"
        self._holders: list[subprocess.Popen] = []

    def file(self, name: str, text: str) -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def dir(self, name: str, docs: int = 3) -> Path:
        return write_texts(self.root / name, docs, 0, "prose")

    def recipe(self, data) -> Path:
        return self.file("recipe.yaml", yaml.safe_dump(data))

    def hold_lock(self, out: Path) -> Path:
        """A live process owns `out`'s lock, as a second run would find it while the first is running."""
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        self._holders.append(holder)
        out.with_name(f".{out.name}.lock").write_text(json.dumps({"pid": holder.pid,
                                                                  "host": socket.gethostname()}))
        return out

    def close(self) -> None:
        for h in self._holders:
            h.kill()
            h.wait()


@dataclass
class Row:
    id: str
    argv: Callable[[Workspace], list]  # the command line after `slm`
    words: str  # expected in the one error line
    # globs (relative to the row's folder) of what the run may leave
    keeps: tuple[str, ...] = field(default=())
    fault: Callable | None = None  # fault(monkeypatch): break the environment for this run


def train(w: Workspace, *extra, out=None) -> list:
    return ["train", f"model={w.M}", f"data={w.D}", f"out={out or w.out}", *TRAIN, *extra]


def prepare(w: Workspace, *sources, out=None, tok=None) -> list:
    return ["data", "prepare", str(out or w.out), "-t", str(tok or w.M), "--workers", "1",
            *[a for s in sources for a in ("-s", s)]]


def merge(w: Workspace, recipe: dict, *extra, out=None) -> list:
    return ["merge", str(w.recipe(recipe)), str(out or w.out), *extra]


TEXT = '{"text": "a"}\n'  # one good text record


def chat(*roles: str) -> str:
    return json.dumps({"messages": [{"role": r, "content": "hi"} for r in roles]}) + "\n"


ROWS = [
    # train: the output never destroys an input, even with --force
    Row("train-out-is-model", lambda w: train(w, "--force", out=w.M), "is the input"),
    Row("train-out-inside-model", lambda w: train(w, out=w.M / "run"), "lies inside the input"),
    Row("train-out-contains-inputs", lambda w: train(w, "--force", out=w.root), "contains the input"),
    Row("train-out-is-data", lambda w: train(w, "--force", out=w.D), "is the input"),
    Row("train-out-is-init", lambda w: train(w, f"--init={w.dir('W')}", "--force", out=w.root / "W"),
        "is the input"),
    Row("train-out-parent-is-file", lambda w: train(w, out=w.file("afile", "x") / "run"),
        "is a file, not a folder"),
    Row("train-out-is-file", lambda w: train(w, out=w.file("afile", "x")), "is a file, not a run folder"),
    Row("train-out-locked", lambda w: train(w, out=w.hold_lock(w.out)), "locked by PID"),
    Row("train-resume-nothing", lambda w: train(w, "--resume"), "no complete checkpoint"),
    # train: --init weights replace the model's, so another shape would train another model
    Row("train-init-of-another-shape",
        lambda w: train(w, f"--init={make_tiny(w.root / 'B', vocab_size=VOCAB, num_hidden_layers=4)}"),
        "is not of model"),
    # train: numbers refused before any folder exists
    Row("train-eps-negative", lambda w: train(w, "eps=-1"), "eps must be a finite number in (0, ∞)"),
    Row("train-steps-fraction", lambda w: train(w, "steps=2.9"), "steps=2.9 is not a whole number"),
    Row("train-lr-inf", lambda w: train(w, "lr=.inf"), "lr=inf is not a finite number"),
    Row("train-betas-text", lambda w: train(w, "betas=[0.9, abc]"),
        "betas[1] must be a finite number in [0, 1)"),
    Row("train-warmup-over-one", lambda w: train(w, "warmup_ratio=1.5"),
        "warmup_ratio must be a finite number"),
    # train: an attention path, loss or device this machine lacks, refused before any weights are read
    Row("train-attn-flash-missing", lambda w: train(w, "attn=flash"),
        "attn=flash needs flash-attn: `pip install flash-attn"),
    Row("train-attn-flex-on-cpu", lambda w: train(w, "attn=flex", "device=cpu"),
        "attn=flex trains on CUDA only"),
    Row("train-loss-liger-missing", lambda w: train(w, "loss=liger"), "loss=liger needs liger-kernel"),
    Row("train-device-cuda-missing", lambda w: train(w, "device=cuda"),
        "no CUDA device is visible: use device=cpu"),
    # train: a loss that turns NaN stops the run, keeping the last good checkpoint and writing no final model
    Row("train-loss-nan", lambda w: train(w, "lr=1e30", "save_every=1", "warmup_ratio=0", "steps=4"),
        "step 2: the", keeps=("out", "out/metrics.jsonl", "out/recipe.yaml", "out/checkpoints",
                               "out/checkpoints/step-000001", "out/checkpoints/step-000001/*")),
    # data prepare: records checked before tokenizing; outputs guarded
    Row("data-malformed-jsonl", lambda w: prepare(w, "c=" + str(w.file("bad.jsonl", TEXT + '{"text": '))),
        "bad.jsonl:2: not valid JSON"),
    Row("data-weight-not-a-number", lambda w: prepare(w, f"c={w.dir('src')}:abc"),
        "weight 'abc' is not a number"),
    Row("data-chat-without-assistant", lambda w: prepare(w, f"c={w.file('chat.jsonl', chat('user') * 3)}"),
        "has an assistant turn"),
    Row("data-mixed-text-and-chat",
        lambda w: prepare(w, "c=" + str(w.file("mix.jsonl", TEXT + chat("user", "assistant")))),
        "mix.jsonl:2: source c mixes text and chat"),
    Row("data-out-inside-source", lambda w: prepare(w, f"c={w.dir('src')}", out=w.root / "src" / "prepared"),
        "lies inside the input"),
    Row("data-out-is-tokenizer", lambda w: prepare(w, f"c={w.dir('src')}", out=w.M) + ["--force"],
        "is the input"),
    Row("data-out-parent-is-file", lambda w: prepare(w, f"c={w.dir('src')}", out=w.file("afile", "x") / "d"),
        "is a file, not a folder"),
    Row("data-out-locked", lambda w: prepare(w, f"c={w.dir('src')}", out=w.hold_lock(w.out)),
        "locked by PID"),
    # eval: its report folder is an output too
    Row("eval-folder-without-a-model", lambda w: ["eval", w.dir("texts"), "--data", w.D],
        "texts: no HF model (config.json), checkpoint or run with a complete checkpoint there; pass a model"),
    Row("eval-probe-without-a-tokenizer",
        lambda w: ["eval", without_tokenizer(w), "--data", w.D, "--probe", "instruct"],
        "has no tokenizer (tokenizer.json): the instruction probe needs one"),
    Row("eval-out-is-model", lambda w: ["eval", w.M, "--data", w.D, "--out", w.M, "--force"], "is the input"),
    Row("eval-lm-eval-unknown-task", lambda w: ["eval", w.M, "--lm-eval", "no_such_task_xyz"],
        "unknown task"),
    Row("eval-humaneval-no-tokenizer",
        lambda w: ["eval", w.file("bare/config.json", (w.M / "config.json").read_text()).parent,
                   "--humaneval", "loss"], "has no tokenizer"),
    # ablate: its own settings, before any training
    Row("ablate-seeds-0",
        lambda w: ["ablate", "", f"model={w.M}", f"data={w.D}", "-o", w.out, "--seeds", "0"], "--seeds 0"),
    Row("ablate-lr-grid-not-positive",
        lambda w: ["ablate", "", f"model={w.M}", f"data={w.D}", "-o", w.out, "--lr-grid", "1,-3"],
        "must be a positive number"),
    # merge: recipe values and the output
    Row("merge-t-not-a-number",
        lambda w: merge(w, {"method": "slerp", "models": [str(w.M), str(w.M)], "t": "abc"}),
        "slerp t must be in [0, 1]"),
    Row("merge-weight-not-a-number",
        lambda w: merge(w, {"method": "linear", "models": [{"model": str(w.M), "weight": "abc"}]}),
        "weight 'abc' is not a finite number"),
    Row("merge-entry-without-model", lambda w: merge(w, {"method": "linear", "models": [{"weight": 1}]}),
        "needs a `model:` path"),
    Row("merge-recipe-is-a-list", lambda w: merge(w, [{"method": "linear"}]), "holds a list, not a mapping"),
    # recipes: a YAML list or mapping where one name or path belongs
    Row("merge-dtype-is-a-list",
        lambda w: merge(w, {"method": "linear", "models": [str(w.M)], "dtype": ["float16"]}),
        "dtype=['float16'] is a list, not a single value"),
    Row("merge-method-is-a-list", lambda w: merge(w, {"method": ["linear"], "models": [str(w.M)]}),
        "method=['linear'] is a list"),
    Row("merge-base-is-a-mapping",
        lambda w: merge(w, {"method": "task_arithmetic", "base": {"model": str(w.M)}, "models": [str(w.M)]}),
        "is a mapping, not a single value"),
    Row("train-preset-is-a-list", lambda w: train(w, "preset=[cpt]"), "preset=['cpt'] is a list"),
    Row("train-preset-is-a-mapping", lambda w: train(w, "preset={cpt: 1}"), "preset={'cpt': 1} is a mapping"),
    Row("merge-out-is-input",
        lambda w: merge(w, {"method": "linear", "models": [str(w.M), str(w.M)]}, "--force", out=w.M),
        "is the input"),
    Row("merge-out-locked",
        lambda w: merge(w, {"method": "linear", "models": [str(w.M)]}, out=w.hold_lock(w.out)),
        "locked by PID"),
]


# ---- import / info / surgery / export / profile: GGUF and checkpoint damage, outputs over inputs -----------
def truncated(w: Workspace, n: int, name: str = "cut.gguf") -> Path:
    """The first n bytes of the template's tiny f32 GGUF (n < 0: all but the last -n bytes)."""
    data = (w.root / "m.gguf").read_bytes()
    return _write(w.root / name, data[:n])


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def bad_shape(w: Workspace) -> Path:
    """A copy of M whose first 2-D tensor's header shape disagrees with its bytes (half the columns)."""
    import struct

    bad = w.root / "Mbad"
    shutil.copytree(w.M, bad)
    f = next(bad.glob("*.safetensors"))
    b = f.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    k = next(k for k in h if k != "__metadata__" and len(h[k]["shape"]) == 2)
    h[k]["shape"] = [h[k]["shape"][0], h[k]["shape"][1] // 2]
    raw = json.dumps(h).encode()
    raw += b" " * (-len(raw) % 8)
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + b[8 + n:])
    return bad


def without_tokenizer(w: Workspace) -> Path:
    """A copy of M with its weights and config only."""
    d = w.root / "bare"
    d.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy2(w.M / f, d / f)
    return d


def training_run(w: Workspace) -> Path:
    """A folder laid out as `slm train` leaves one: final/ holds the model."""
    run = w.root / "run"
    shutil.copytree(w.M, run / "final")
    (run / "metrics.jsonl").write_text("")
    return run


def config_dir(w: Workspace, name: str, config: dict) -> Path:
    d = w.root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return d


ROWS += [
    Row("info-empty-gguf", lambda w: ["info", w.file("zero.gguf", "")], "not a GGUF file (bad magic)"),
    Row("import-gguf-cut-in-header", lambda w: ["import", truncated(w, 4096), w.out],
        "ends inside the header"),
    Row("import-gguf-cut-in-tensors", lambda w: ["import", truncated(w, -1000), w.out],
        "is truncated: tensor"),
    Row("import-out-is-the-gguf", lambda w: ["import", w.root / "m.gguf", w.root / "m.gguf", "--force"],
        "is the input"),
    Row("import-default-and-file", lambda w: ["import", "--default", w.root / "m.gguf", w.out],
        "takes no GGUF file"),
    Row("expand-out-is-model", lambda w: ["expand", w.M, w.M, "--groups", "2", "--force"], "is the input"),
    Row("upscale-out-inside-model", lambda w: ["upscale", w.M, w.M / "up", "--drop", "1"],
        "lies inside the input"),
    Row("expand-gpt2",
        lambda w: ["expand", config_dir(w, "gpt2", {"model_type": "gpt2", "n_layer": 2}), w.out,
                   "--groups", "1"], "unsupported architecture 'gpt2'"),
    Row("expand-minimal-config", lambda w: ["expand", config_dir(w, "min", {"model_type": "llama"}), w.out,
                                            "--groups", "1"], "lacks num_hidden_layers"),
    Row("expand-shape-disagrees-with-bytes", lambda w: ["expand", bad_shape(w), w.out, "--groups", "2"],
        "has shape"),
    Row("expand-out-locked", lambda w: ["expand", w.M, w.hold_lock(w.out), "--groups", "2"], "locked by PID"),
    Row("export-out-is-model",
        lambda w: ["export", w.M, "-o", w.M, "--gguf", "f32", "--pre-tokenizer", "gpt-2", "--force"],
        "is the input"),
    Row("export-shape-disagrees-with-bytes",
        lambda w: ["export", bad_shape(w), "-o", w.out, "--gguf", "f32", "--pre-tokenizer", "gpt-2"],
        "has shape"),
    Row("export-a-training-run",
        lambda w: ["export", training_run(w), "-o", w.out, "--gguf", "f32", "--pre-tokenizer", "gpt-2"],
        "it is a training run; pass its final model"),
    Row("export-unknown-type", lambda w: ["export", w.M, "-o", w.out, "--gguf", "q7_x"],
        "unknown GGUF type 'q7_x'"),
    Row("export-unknown-int4-candidate", lambda w: ["export", w.M, "-o", w.out, "--onnx", "int4:awq"],
        "unknown ONNX int4 candidate 'awq'"),
    Row("export-unknown-int4-rule",
        lambda w: ["export", w.M, "-o", w.out, "--onnx", "int4", "--int4-rule", "fast"],
        "unknown --int4-rule 'fast': choose one of balanced, quality, speed"),
    Row("profile-negative-latency-prompt",
        lambda w: ["profile", w.M, "-o", w.out, "--latency-prompt", "-1"], "--latency-prompt must be ≥ 0"),
    Row("profile-out-unwritable",
        lambda w: ["profile", w.M, "-o", "/proc/slm-bad-input", "--backends", "torch"],
        "choose a writable output path"),
    Row("profile-unknown-quant", lambda w: ["profile", w.M, "-o", w.out, "--quant", "q7_x"],
        "unknown GGUF type 'q7_x'"),
    Row("profile-unknown-backend", lambda w: ["profile", w.M, "-o", w.out, "--backends", "tensorrt"],
        "unknown backend 'tensorrt'"),
    Row("profile-shape-disagrees-with-bytes",
        lambda w: ["profile", bad_shape(w), "-o", w.out, "--backends", "torch"], "has shape"),
    Row("profile-out-is-model", lambda w: ["profile", w.M, "-o", w.M, "--force"], "is the input"),
    Row("compare-out-is-a-run", lambda w: ["report", "compare", w.M, w.D, "-o", w.M, "--force"],
        "is the input"),
    Row("compare-out-inside-a-run", lambda w: ["report", "compare", w.M, w.D, "-o", w.D / "cmp"],
        "lies inside the input"),
]


# ---- a full disk, wherever a verb writes -----------------------------------------------------------------
def fills_disk(target: str, name: str, after: int = 1, short_write: bool = False) -> Callable:
    """A fault: `module:Class`'s method `name` works `after` times, then fails as a write on a full disk
    does — ENOSPC, or numpy's errno-less short write (what the gguf package's tofile raises)."""

    def fault(mp):
        import importlib

        mod, cls = target.split(":")
        owner = getattr(importlib.import_module(mod), cls)
        real, calls = getattr(owner, name), []

        def failing(*a, **k):
            calls.append(1)
            if len(calls) > after:
                raise (OSError("3145728 requested and 144632 written") if short_write
                       else OSError(errno.ENOSPC, "No space left on device"))
            return real(*a, **k)

        mp.setattr(owner, name, failing)
    return fault


def _no_free_space(mp):
    mp.setattr("slm.quant.quantize._free_bytes", lambda path: 1024)


DISK_FULL = "disk full while writing"
ROWS += [
    Row("expand-disk-full", lambda w: ["expand", w.M, w.out, "--groups", "2"], DISK_FULL,
        fault=fills_disk("slm.io:ShardedWriter", "add", 3)),
    Row("upscale-disk-full", lambda w: ["upscale", w.M, w.out, "--drop", "1"], DISK_FULL,
        fault=fills_disk("slm.io:ShardedWriter", "add", 3)),
    Row("merge-disk-full", lambda w: merge(w, {"method": "linear", "models": [str(w.M), str(w.M)]}),
        DISK_FULL, fault=fills_disk("slm.io:ShardedWriter", "add", 3)),
    Row("prune-disk-full",
        lambda w: ["prune", w.M, w.out, "--drop", "1", "--tokens", "64", "--seq-len", "32"], DISK_FULL,
        fault=fills_disk("slm.io:ShardedWriter", "add", 3)),
    Row("data-disk-full", lambda w: prepare(w, f"c={w.dir('src')}"), DISK_FULL,
        fault=fills_disk("slm.train.data:_SplitWriter", "add", 1)),
    Row("export-gguf-disk-full",
        lambda w: ["export", w.M, "-o", w.out, "--gguf", "f32", "--pre-tokenizer", "gpt-2"], DISK_FULL,
        fault=fills_disk("gguf:GGUFWriter", "write_tensor_data", 2, short_write=True)),
    Row("export-quantize-disk-full",
        lambda w: ["export", w.M, "-o", w.out, "--gguf", "q8_0", "--pre-tokenizer", "gpt-2"], DISK_FULL,
        fault=_no_free_space),
]


# ---- config.json values and GGUF header fields of the wrong type or range ----------------------------------
TINY_CFG = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
            "max_position_embeddings": 256}


def cfg(w: Workspace, **over) -> Path:
    """A config.json of TINY_CFG with `over` (NaN and Infinity written as JSON allows them)."""
    return w.file("cfg/config.json", json.dumps({**TINY_CFG, **over}))


def raw_gguf(w: Workspace, name: str, kvs: list, head: bytes = b"") -> Path:
    """A GGUF v3 with no tensors and these (key, type, value) fields, written by hand so that any value can be
    wrong; `head` is inserted as the raw bytes of one more field (for shapes no writer makes)."""
    import struct

    def string(x: str) -> bytes:
        return struct.pack("<Q", len(x.encode())) + x.encode()

    fmt = {4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
    body = b"".join(string(k) + struct.pack("<I", t) + (string(v) if t == 8 else struct.pack(fmt[t], v))
                    for k, t, v in kvs)
    n = len(kvs) + (1 if head else 0)
    return _write(w.root / name, b"GGUF" + struct.pack("<IQQ", 3, 0, n) + body + head)


def llama_kvs(**over) -> list:
    """The header fields slm reads from a llama GGUF (type 4: uint32, 8: string), with `over` as (type,
    value) or None to drop a field."""
    base = {"general.architecture": (8, "llama"), "llama.block_count": (4, 2),
            "llama.embedding_length": (4, 64), "llama.feed_forward_length": (4, 128),
            "llama.attention.head_count": (4, 4), "llama.attention.head_count_kv": (4, 2),
            "llama.context_length": (4, 256), "llama.vocab_size": (4, 256)}
    base.update(over)
    return [(k, *v) for k, v in base.items() if v is not None]


def export_record_of_another_model(w: Workspace) -> Path:
    """The slm.json of an export of B (same shape as M, other weights) with a q8_0 validation."""
    from slm.record import write_record

    b = make_tiny(w.root / "B", vocab_size=VOCAB, seed=1)
    (w.root / "X").mkdir()
    write_record(w.root / "X", "export", {}, inputs={"model": b},
                 result={"validation": {"gguf": {"q8_0": {"kld": {"kld_mean": 0.01}, "perplexity": 9.0}}}})
    return w.root / "X" / "slm.json"


def nested_arrays(depth: int) -> bytes:
    """One field holding an array of an array of … `depth` deep (GGUF allows arrays of arrays)."""
    import struct

    return (struct.pack("<Q", 1) + b"x" + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * depth
            + struct.pack("<IQ", 4, 0))


ROWS += [
    Row("info-config-context-nan", lambda w: ["info", cfg(w, max_position_embeddings=float("nan"))],
        "max_position_embeddings=nan"),
    Row("info-config-context-infinity", lambda w: ["info", cfg(w, max_position_embeddings=float("inf"))],
        "max_position_embeddings=inf"),
    Row("info-config-context-string", lambda w: ["info", cfg(w, max_position_embeddings="4096")],
        "max_position_embeddings='4096': each must be a positive integer"),
    Row("info-config-context-negative", lambda w: ["info", cfg(w, max_position_embeddings=-4096)],
        "max_position_embeddings=-4096"),
    Row("info-config-kv-heads-do-not-divide", lambda w: ["info", cfg(w, num_key_value_heads=3)],
        "num_key_value_heads=3, which does not divide num_attention_heads=4"),
    Row("info-config-tied-is-a-string", lambda w: ["info", cfg(w, tie_word_embeddings="false")],
        "tie_word_embeddings='false'"),
    Row("plan-config-context-nan",
        lambda w: ["plan", "--config", cfg(w, max_position_embeddings=float("nan")), "--device",
                   "jetson-orin-nano-8gb"], "max_position_embeddings=nan"),
    Row("profile-config-context-string",
        lambda w: ["profile", "--config", cfg(w, max_position_embeddings="4096"), "-o", w.out, "--device",
                   "jetson"], "max_position_embeddings='4096'"),
    # plan: a context past the model's maximum would say that everything fits at a context none can use
    Row("plan-context-above-the-model-max",
        lambda w: ["plan", cfg(w, max_position_embeddings=8192), "--device", "jetson-orin-nano-8gb",
                   "--context", "65536"], "--context 65,536 is above the model's maximum context 8,192"),
    Row("plan-quality-not-json",
        lambda w: ["plan", w.M, "--device", "jetson-orin-nano-8gb", "--context", "256", "--quality",
                   w.file("q/slm.json", "not json {")], "is not valid JSON"),
    Row("plan-quality-of-another-model",
        lambda w: ["plan", w.M, "--device", "jetson-orin-nano-8gb", "--context", "256", "--quality",
                   export_record_of_another_model(w)], "measured another model than"),
    Row("info-gguf-zero-heads",
        lambda w: ["info", raw_gguf(w, "h.gguf", llama_kvs(**{"llama.attention.head_count": (4, 0)}))],
        "llama.attention.head_count is 0"),
    Row("info-gguf-missing-heads",
        lambda w: ["info", raw_gguf(w, "h.gguf", llama_kvs(**{"llama.attention.head_count": None}))],
        "llama.attention.head_count is None"),
    Row("info-gguf-string-count",
        lambda w: ["info", raw_gguf(w, "h.gguf", llama_kvs(**{"llama.embedding_length": (8, "64")}))],
        "llama.embedding_length is '64'"),
    Row("info-gguf-nan-context",
        lambda w: ["info", raw_gguf(w, "h.gguf", llama_kvs(**{"llama.context_length": (6, float("nan"))}))],
        "llama.context_length is nan"),
    Row("info-gguf-zero-alignment",
        lambda w: ["info", raw_gguf(w, "h.gguf", llama_kvs(**{"general.alignment": (4, 0)}))],
        "general.alignment"),
    Row("info-gguf-alignment-string",
        lambda w: ["info", raw_gguf(w, "h.gguf", llama_kvs(**{"general.alignment": (8, "32")}))],
        "general.alignment"),
    Row("info-gguf-pathological-nesting",
        lambda w: ["info", raw_gguf(w, "h.gguf", llama_kvs(), head=nested_arrays(100_000))],
        "the header is damaged"),
    Row("info-gguf-kv-heads-do-not-divide",
        lambda w: ["info", raw_gguf(w, "h.gguf", llama_kvs(**{"llama.attention.head_count_kv": (4, 3)}))],
        "3 KV heads do not divide 4 query heads"),
]


def tree(root: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under `root` ("dir" for folders): what must not change."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() and not p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """M (tiny llama + byte tokenizer) and D (two small text sources prepared with it), built once, copied per
    row."""
    from slm.train.data import DataArgs, Source, prepare

    root = tmp_path_factory.mktemp("bad-inputs")
    save_byte_tokenizer(make_tiny(root / "M", vocab_size=VOCAB))
    code, prose = write_texts(root / "src-a", 12, 1, "code"), write_texts(root / "src-b", 12, 2, "prose")
    prepare(DataArgs([Source("code", str(code)), Source("prose", str(prose))], str(root / "M"), heldout=0.2,
                     workers=1, progress=False), root / "D")
    from slm.quant.gguf_write import write_gguf

    write_gguf(root / "M", root / "m.gguf", "f32", pre_tokenizer="gpt-2")  # a small valid GGUF to damage
    return root


@pytest.fixture
def workspace(tmp_path, template):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads on a shared machine
    w = Workspace(tmp_path / "w", template)
    yield w
    w.close()
    torch.set_num_threads(threads)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_one_line_and_loses_nothing(row: Row, workspace: Workspace, capsys, monkeypatch):
    argv = [str(a) for a in row.argv(workspace)]
    if row.fault:
        row.fault(monkeypatch)
    before = tree(workspace.root)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, f"exit code {rc}; stderr: {err[-2000:]}"
    assert "Traceback" not in out + err
    lines = err.splitlines()
    if row.fault:  # valid until its fault: it may warn and show progress first; one error line ends stderr
        assert sum("error" in ln.lower() for ln in lines) == 1, err[-2000:]
        lines = [ln for ln in lines if ln.strip()][-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr is not one error line: {err[-2000:]}"
    assert row.words in lines[0], lines[0]
    after = tree(workspace.root)
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"inputs changed or removed: {changed[:5]}"
    left = [p for p in after if p not in before and not any(fnmatch.fnmatch(p, g) for g in row.keeps)]
    assert not left, f"left behind: {left[:5]}"
    assert not any(".tmp-" in p or p.endswith(".lock") for p in set(after) - set(before))
    if row.keeps:  # what a failed run keeps: never a final model
        assert not (workspace.out / "final").exists()


def test_every_row_id_is_unique():
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)) and all(os.sep not in i for i in ids)
