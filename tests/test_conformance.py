"""The conformance matrix: each architecture of the family, as a tiny random model with its real config's
features (hidden 64, 2-4 layers, the byte tokenizer), through every verb — one test per cell.

    expand → train (2 steps, trainable=expanded) → merge (WiSE-FT) → export f32 + q8_0 (validated) →
    parity past the original context / the window → import back → profile --quick (slow)

A cell runs the steps before it once per architecture (cached in the module); when an earlier step failed,
the cell fails naming it. `python -m tests.test_conformance` prints the README's "Supported models" table,
and test_readme_lists_the_matrix keeps the two in step.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from slm.errors import SlmError

SEQ = 300  # parity positions: well past the rope-scaled models' original context of 64
VOCAB = 320  # the trained byte-level BPE below: 256 bytes + merges + <|endoftext|>


def save_bpe_tokenizer(folder: Path) -> None:
    """A byte-level BPE with merges (llama.cpp's BPE needs them), trained on the validation text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from slm.quant import runtimes as rt

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([rt.HELD_OUT_TEXT] * 3, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(folder))


@dataclass(frozen=True)
class Arch:
    """One row of the matrix: a family member as a tiny config with its real config's features."""

    name: str  # the family member it stands for
    kind: str  # tests.conftest.make_tiny kind (the HF model_type)
    features: str  # what the row exercises, for the README
    config: dict = field(default_factory=dict)  # config overrides giving those features
    pre_tokenizer: str = "gpt-2"  # llama.cpp pre-tokenizer matching transformers' tokenizer class for `kind`
    tied: bool = False  # tie_word_embeddings
    groups: int = 1  # expand --groups (copies 1)
    export_expanded: bool = True  # False: llama.cpp cannot run the expanded model (the refusal is the cell)
    note: str = ""  # the README's caveat

    def __post_init__(self):
        if self.kind not in ("llama", "mistral", "qwen2", "qwen3", "smollm3"):
            raise ValueError(f"unknown kind {self.kind}")


BASE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=2, max_position_embeddings=1024)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64, "rope_theta": 500000.0}
ARCHS = [
    Arch("Llama-2", "llama", "untied head, RoPE θ 10k", {"rope_theta": 10000.0}),
    Arch("Llama-3.2", "llama", "rope_scaling llama3 (rope_freqs), tied", {"rope_scaling": dict(LLAMA3)},
         tied=True),
    Arch("Mistral", "mistral", "sliding window 32", {"sliding_window": 32}, tied=False,
         note="llama.cpp has no sliding window for it: exact within the window, flagged beyond it"),
    Arch("Qwen2", "qwen2", "q/k/v biases, tied", {"layer_types": ["full_attention"] * 2}, "qwen2", tied=True),
    Arch("Qwen2.5", "qwen2", "biases, RoPE θ 1M, rope_scaling yarn",
         {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                           "rope_theta": 1000000.0}, "layer_types": ["full_attention"] * 2}, "qwen2"),
    # transformers takes Qwen3's tokenizer.json as it is (Qwen2's gets Qwen2Tokenizer's digit splitting)
    Arch("Qwen3", "qwen3", "q/k norms, explicit head_dim 32 ≠ 64/4", {"head_dim": 32}, tied=True),
    Arch("SmolLM2", "llama", "tied, RoPE θ 100k, GQA 4:1", {"rope_theta": 100000.0, "num_key_value_heads": 1},
         tied=True),
    Arch("SmolLM3", "smollm3", "NoPE every 4th layer (no_rope_layers)",
         {"num_hidden_layers": 4, "no_rope_layers": [1, 1, 1, 0], "pad_token_id": None, "bos_token_id": None,
          "eos_token_id": 0}, tied=True, export_expanded=False,
         note="llama.cpp fixes NoPE at every 4th layer: an expanded SmolLM3 is refused at export (the "
              "unexpanded one exports)"),
]
CELLS = ["expand", "train", "merge", "export", "parity", "import", "profile"]
PHI3 = ("Phi-3", "fused qkv_proj / gate_up_proj weights and LongRoPE: refused by `slm` with the reason")


class Pipeline:
    """The verbs on one architecture, each run once; a failure is kept and re-raised by later cells."""

    def __init__(self, arch: Arch, root: Path, data: Path):
        self.arch, self.root, self.data = arch, root, data
        self.done: dict[str, object] = {}

    def get(self, step: str):
        if step not in self.done:
            try:
                self.done[step] = getattr(self, f"_{step}")()
            except BaseException as e:  # noqa: BLE001  (kept for the later cells, then re-raised)
                self.done[step] = e
                raise
        r = self.done[step]
        if isinstance(r, BaseException):
            pytest.fail(f"{self.arch.name}: step {step} failed earlier: {str(r).splitlines()[0][:300]}")
        return r

    def _base(self) -> Path:
        from tests.conftest import make_tiny

        d = make_tiny(self.root / "base", self.arch.kind, self.arch.tied, vocab_size=VOCAB,
                      **{**BASE, **self.arch.config})
        save_bpe_tokenizer(d)
        return d

    def _expand(self) -> Path:
        from slm.surgery.expand import ExpandArgs, expand

        out = self.root / "expanded"
        expand(self.get("base"), out, ExpandArgs(groups=self.arch.groups, copies=1))  # parity checked
        return out

    def _train(self) -> Path:
        from slm.train.args import load_recipe
        from slm.train.loop import train

        res = train(load_recipe(None, [f"model={self.get('expand')}", f"data={self.data}",
                                       f"out={self.root / 'run'}", "steps=2", "seq_len=32", "global_batch=2",
                                       "micro_batch=2", "lr=3e-3", "trainable=expanded", "progress=false",
                                       "report=false", "eval=false"]))
        return Path(res["model"])

    def _merge(self) -> Path:
        from slm.surgery.merge import MergeRecipe, merge

        out = self.root / "merged"
        merge(MergeRecipe(method="linear", models=[str(self.get("expand")), str(self.get("train"))]), out)
        return out

    def _export(self) -> tuple[Path, Path, dict]:
        """(the exported HF model, the export folder, the result)."""
        from slm.quant.export import ExportArgs, export

        src = self.get("merge")
        if not self.arch.export_expanded:
            with pytest.raises(SlmError) as e:
                export(src, self.root / "refused", ExportArgs(gguf=["f32"]))
            self.refusal = str(e.value)
            src = self.get("base")
        out = self.root / "export"
        res = export(src, out, ExportArgs(gguf=["f32", "q8_0"], pre_tokenizer=self.arch.pre_tokenizer,
                                          n_ctx=64, threads=1))
        return src, out, res


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    from slm.train.data import DataArgs, Source, prepare
    from tests.train.conftest import write_texts

    root = tmp_path_factory.mktemp("conformance")
    tok = root / "tok"
    tok.mkdir()
    save_bpe_tokenizer(tok)
    (tok / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": VOCAB}))
    data = root / "data"
    prepare(DataArgs([Source("prose", str(write_texts(root / "prose", 30, 2, "prose")), 1.0)], str(tok),
                     heldout=0.1, workers=1, progress=False), data)
    return {a.name: Pipeline(a, root / a.name, data) for a in ARCHS}


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


NAMES = [a.name for a in ARCHS]


@pytest.mark.parametrize("arch", NAMES)
def test_expand(pipelines, arch):
    from slm.io import read_config

    p = pipelines[arch]
    cfg = read_config(p.get("expand"))
    n = p.arch.config.get("num_hidden_layers", BASE["num_hidden_layers"])
    assert cfg["num_hidden_layers"] == n + p.arch.groups
    for k in ("layer_types", "no_rope_layers"):
        if k in p.arch.config:
            assert len(cfg[k]) == cfg["num_hidden_layers"]


@pytest.mark.parametrize("arch", NAMES)
def test_train(pipelines, arch):
    from safetensors.torch import load_file

    p = pipelines[arch]
    before, after = load_file(str(p.get("expand") / "model.safetensors")), load_file(
        str(p.get("train") / "model.safetensors"))
    changed = {k for k in before if not (before[k] == after[k]).all()}
    new = json.loads((p.get("expand") / "config.json").read_text())["slm_surgery"]["new_layers"]
    assert changed and all(any(f"layers.{i}." in k for i in new) for k in changed)


@pytest.mark.parametrize("arch", NAMES)
def test_merge(pipelines, arch):
    from slm.io import read_config

    p = pipelines[arch]
    layers = read_config(p.get("expand"))["num_hidden_layers"]
    assert read_config(p.get("merge"))["num_hidden_layers"] == layers


@pytest.mark.parametrize("arch", NAMES)
def test_export(pipelines, arch):
    p = pipelines[arch]
    _, _, res = p.get("export")
    v = res["validation"]
    if not p.arch.export_expanded:
        assert "every 4th layer" in p.refusal and "\n" not in p.refusal
    assert not v.get("failed"), v.get("failed")
    assert v["tokenizer"]["matching"] == v["tokenizer"]["strings"]
    assert v["gguf"]["f32"]["max_rel_err"] < 1e-3 and v["gguf"]["f32"]["top1_agree"] == 1.0
    assert v["gguf"]["q8_0"]["top1_agree"] > 0.9
    if "sliding_window" in p.arch.config:
        assert v["exact_ctx"] == p.arch.config["sliding_window"] and "gguf f32" in v["flagged"]
    else:
        assert not v.get("flagged")


@pytest.mark.parametrize("arch", NAMES)
def test_parity(pipelines, arch):
    """f32 GGUF vs HF over 300 positions (past the original context of the rope-scaled rows); the windowed
    row matches within its window."""
    from slm.io import load_model
    from slm.quant import runtimes as rt

    p = pipelines[arch]
    src, out, _ = p.get("export")
    n = min(SEQ, p.arch.config.get("sliding_window", SEQ))
    ids = np.random.default_rng(0).integers(0, VOCAB, n).tolist()
    model = load_model(src)
    with rt.open_gguf(next(out.glob("*-f32.gguf")), n + 16, exact=True, threads=1) as llm:
        cmp = rt.compare_logits([rt.hf_logits(model, ids)], [llm.logits(ids)])
    assert cmp["max_rel_err"] < 1e-3 and cmp["top1_agree"] == 1.0, cmp


@pytest.mark.parametrize("arch", NAMES)
def test_import(pipelines, arch, tmp_path):
    import torch

    from slm.gguf_import import import_gguf
    from slm.io import load_model, read_config

    p = pipelines[arch]
    src, out, _ = p.get("export")
    back = import_gguf(next(out.glob("*-f32.gguf")), tmp_path / "back")
    a, b = load_model(src), load_model(back)
    ids = torch.tensor([list(range(1, 40))])
    with torch.no_grad():
        assert float((a(ids).logits - b(ids).logits).abs().max()) < 1e-5
    for k in ("head_dim", "rope_parameters", "sliding_window", "no_rope_layers", "tie_word_embeddings"):
        assert read_config(back).get(k) == read_config(src).get(k), k
    assert (back / "tokenizer.json").is_file() or (back / "tokenizer_config.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("arch", NAMES)
def test_profile(pipelines, arch, tmp_path):
    from slm.profiling.api import profile_model
    from slm.profiling.args import ProfileArgs

    p = pipelines[arch]
    _, out, _ = p.get("export")
    res = profile_model(str(out), tmp_path / "prof", ProfileArgs(quick=True, threads=1, quant=("q8_0",)),
                        force=True, progress=lambda s: None)
    assert res["kv"]["measured"] and all(r["kv_cache"] > 0 for r in res["kv"]["measured"])
    # head size 16: the quantized KV types are skipped with the reason, the rest is kept
    for s in res["kv"].get("skipped", []):
        assert "block" in s["reason"]


# ---- the README's table ---------------------------------------------------------------------------------
def readme_table() -> str:
    """The "Supported models" table of the README, from ARCHS and CELLS."""
    head = "| model | HF model_type | what the tiny model has | " + " | ".join(CELLS) + " | note |"
    rows = [head, "|" + "---|" * (len(CELLS) + 4)]
    for a in ARCHS:
        cells = ["✓"] * len(CELLS)
        if not a.export_expanded:
            cells[CELLS.index("export")] = "✓ (unexpanded)"
        if "sliding_window" in a.config:
            cells[CELLS.index("parity")] = "✓ (within the window)"
        rows.append(f"| {a.name} | `{a.kind}` | {a.features} | " + " | ".join(cells) + f" | {a.note} |")
    rows.append(f"| {PHI3[0]} | `phi3` | — | " + " | ".join(["✗"] * len(CELLS)) + f" | {PHI3[1]} |")
    return "\n".join(rows)


def test_readme_lists_the_matrix():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert readme_table() in readme, "README's models table is stale: python -m tests.test_conformance"


if __name__ == "__main__":
    sys.stdout.write(readme_table() + "\n")


def test_phi3_is_refused_with_the_reason():
    from slm.spec import spec_from_config

    with pytest.raises(SlmError, match="qkv_proj.*LongRoPE"):
        spec_from_config({"model_type": "phi3"})


def test_llama32_expand_to_validated_q4_k_m(pipelines, tmp_path):
    """The issue's done-line: a Llama-3.2-shaped model (rope_scaling llama3) from `slm expand` to a validated
    q4_k_m GGUF, f32 parity ≤ 1e-3."""
    from slm.quant.export import ExportArgs, export

    p = pipelines["Llama-3.2"]
    res = export(p.get("expand"), tmp_path / "q4", ExportArgs(gguf=["f32", "q4_k_m"], n_ctx=64, threads=1,
                                                               pre_tokenizer=p.arch.pre_tokenizer))
    v = res["validation"]
    assert not v.get("failed") and not v.get("flagged")
    assert v["gguf"]["f32"]["max_rel_err"] <= 1e-3
    q4 = v["gguf"]["q4_k_m"]
    assert q4["kld"]["kld_mean"] > 0 and q4["top1_agree"] > 0.5, q4
    assert any(f["type"] == "q4_k_m" and f["size_bytes"] > 0 for f in res["files"])
