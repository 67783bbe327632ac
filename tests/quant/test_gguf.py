"""GGUF writer, quantizer and export errors on tiny random checkpoints (fast)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import llama_cpp  # noqa: F401  (a test dependency: missing, the GGUF suite must fail, not skip)
import numpy as np
import pytest

from slm.errors import SlmError
from slm.gguf import QUANT_TYPES, TYPES
from slm.io import load_model
from slm.quant import runtimes as rt
from slm.quant.export import ExportArgs, export
from slm.quant.gguf_write import write_gguf
from slm.quant.imatrix import compute_imatrix
from slm.quant.quantize import inspect_gguf, quantize


def _parity(model_dir: Path, gguf: Path) -> tuple[dict, bool]:
    model = load_model(model_dir)
    prompts = rt.prompt_ids(None, model.config.vocab_size)
    with rt.open_gguf(gguf, 64, exact=True, threads=1) as llm:
        cmp = rt.compare_logits([rt.hf_logits(model, p) for p in prompts], [llm.logits(p) for p in prompts])
        same = rt.hf_greedy(model, prompts[1], 16) == llm.greedy(prompts[1], 16)
    return cmp, same


@pytest.mark.parametrize("kind,tied", [("llama", False), ("llama", True), ("qwen2", False), ("qwen3", True)])
def test_f32_gguf_matches_hf(tiny, tmp_path, kind, tied):
    """Qwen2 (q/k/v biases), Qwen3 (q_norm/k_norm) and llama (Q/K permutation) in f32: logits match HF.

    The tiny checkpoints have no tokenizer: the GGUF is written in llama.cpp's no-vocab mode and fed ids."""
    d = tiny(kind, tied=tied)
    cmp, same_gen = _parity(d, write_gguf(d, tmp_path / "m.gguf", "f32"))
    assert cmp["max_rel_err"] < 1e-4, cmp
    assert cmp["top1_agree"] == 1.0
    assert same_gen


def test_f16_and_bf16_close_to_hf(tiny, tmp_path):
    d = tiny("qwen2")
    for t in ("f16", "bf16"):
        cmp, _ = _parity(d, write_gguf(d, tmp_path / f"m-{t}.gguf", t))
        assert cmp["max_rel_err"] < (2e-2 if t == "bf16" else 5e-3), (t, cmp)
        assert cmp["top1_agree"] > 0.9, (t, cmp)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A tiny llama whose rows are multiples of 256, so K-quants and i-quants apply without fallback."""
    from tests.conftest import make_tiny  # noqa: PLC0415  (conftest helpers are plain functions)

    d = make_tiny(tmp_path_factory.mktemp("wide") / "wide", "llama", hidden_size=256, intermediate_size=512,
                  num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)
    f32 = write_gguf(d, d.parent / "wide-f32.gguf", "f32")
    rng = np.random.default_rng(0)
    imatrix = compute_imatrix(d, None, "llama", n_ctx=64, ids=rng.integers(0, 256, 512).tolist())
    return d, f32, imatrix


@pytest.mark.parametrize("qtype", list(QUANT_TYPES))
def test_every_quant_type_loads_and_generates(wide, tmp_path, qtype):
    d, f32, imatrix = wide
    out = tmp_path / f"wide-{qtype}.gguf"
    log = quantize(f32, out, qtype, imatrix=imatrix if TYPES[qtype].needs_imatrix else None, threads=1)
    info = inspect_gguf(out, qtype, log)
    assert info["main_type"] in info["by_type"], info["by_type"]  # the type really is in the file
    assert info["fallbacks"] == []  # rows of 256 fit every block size
    assert 1.5 < info["bits_per_weight"] < 32
    with rt.open_gguf(out, 64, threads=1) as llm:
        toks = llm.greedy([1, 2, 3, 4], 8)
    assert len(toks) == 8 and all(0 <= t < 256 for t in toks)


def test_fallbacks_reported_from_llama_cpp(tiny, tmp_path):
    """hidden 64 is not a multiple of 256: every 2-D tensor falls back from Q6_K, and the report says so."""
    d = tiny("llama")
    f32 = write_gguf(d, tmp_path / "m-f32.gguf", "f32")
    log = quantize(f32, tmp_path / "m-q6_k.gguf", "q6_k", threads=1)
    info = inspect_gguf(tmp_path / "m-q6_k.gguf", "q6_k", log)
    assert info["fallbacks"], info
    assert all(f["wanted"] == "Q6_K" and f["type"] != "Q6_K" and f["row"] % 256 for f in info["fallbacks"])
    assert "Q6_K" not in info["by_type"]
    # bits per weight is what the file holds: tensor bytes × 8 / parameters
    assert info["bits_per_weight"] == pytest.approx(8 * info["tensor_bytes"] / info["params"])


def test_export_tiny_writes_record_and_report(tiny, tmp_path):
    d = tiny("qwen3")
    out = tmp_path / "exp"
    res = export(d, out, ExportArgs(gguf=["f32", "q8_0"], n_ctx=32, threads=1))
    rec = json.loads((out / "slm.json").read_text())
    assert rec["kind"] == "export" and rec["inputs"]["model"]["sha256"]
    files = {f["type"]: f for f in rec["result"]["files"]}
    assert set(files) == {"f32", "q8_0"}
    for f in files.values():
        assert (out / f["path"]).stat().st_size == f["size_bytes"]
        assert {"type", "path", "size_bytes", "bits_per_weight", "fallbacks"} <= set(f)
    assert res["validation"]["gguf"]["f32"]["max_rel_err"] < 1e-4
    v = res["validation"]
    # KLD vs the f16 reference: f32 differs from it only by f16 rounding, q8_0 by its 8-bit blocks on top
    assert 0 < v["gguf"]["f32"]["kld"]["kld_mean"] < v["gguf"]["q8_0"]["kld"]["kld_mean"] < 0.1
    assert (v["scoring"]["mode"] == "all"
            and v["gguf"]["q8_0"]["mode"] == v["gguf"]["q8_0"]["kld"]["mode"] == "all")
    figs = {f.name: f for f in res["figures"]}
    assert figs["ppl_scoring"].value.startswith("every token") and figs["gguf.q8_0.bpw"].value > 8
    assert figs["gguf.q8_0.ppl"].interval > 0 and figs["gguf.q8_0.kld"].unit == "nats"
    assert (out / "report.html").read_text().count("<svg") >= 1
    assert not list(tmp_path.glob(".exp.*")) and not (out / ".work").exists()


# ---- bad input: one clear error, nothing written ------------------------------------------------------
def _nothing_written(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def test_unknown_quant_type_lists_valid_ones():
    with pytest.raises(SlmError, match="unknown GGUF type 'q9_9'.*q4_k_m"):
        ExportArgs(gguf=["q8_0", "q9_9"])
    with pytest.raises(SlmError, match="importance matrix"):
        ExportArgs(gguf=["iq2_xs"])
    with pytest.raises(SlmError, match="unknown ONNX precision"):
        ExportArgs(gguf=[], onnx=["int3"])
    assert set(TYPES) >= {"f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q2_k", "iq4_xs"}


def test_unsupported_architecture(tmp_path):
    d = tmp_path / "phi"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "phi", "hidden_size": 64}))
    out = tmp_path / "out"
    with pytest.raises(SlmError, match="cannot export architecture 'phi'.*llama"):
        export(d, out, ExportArgs(gguf=["q8_0"]))
    assert _nothing_written(out)


def test_existing_output_needs_force(tiny, tmp_path):
    d = tiny("llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SlmError, match="already exists.*--force"):
        export(d, out, ExportArgs(gguf=["f32"], validate=False))
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    export(d, out, ExportArgs(gguf=["f32"], validate=False, force=True))
    assert not (out / "keep.txt").exists() and (out / f"{d.name}-f32.gguf").is_file()


def test_disk_too_small_is_checked_first(tiny, tmp_path, monkeypatch):
    import slm.quant.export as E

    d = tiny("llama")
    out = tmp_path / "out"
    real = shutil.disk_usage
    monkeypatch.setattr(E.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(SlmError, match="not enough disk.*needs about"):
        export(d, out, ExportArgs(gguf=["f32", "q4_k_m"]))
    assert _nothing_written(out)


def _with_bpe_tokenizer(model_dir: Path, regex_digits: bool, extra: str = "") -> Path:
    """Give a tiny checkpoint a freshly trained byte-level BPE tokenizer (its hash is in no table)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    pre = [pre_tokenizers.Digits(individual_digits=True)] if regex_digits else []
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre + [pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([rt.HELD_OUT_TEXT] * 3 + [extra], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(model_dir))
    return model_dir


def test_unknown_pre_tokenizer_suggests_override(tiny, tmp_path):
    d = _with_bpe_tokenizer(tiny("llama", vocab_size=300), regex_digits=True)
    out = tmp_path / "out"
    with pytest.raises(SlmError, match="pre-tokenizer.*--pre-tokenizer"):
        export(d, out, ExportArgs(gguf=["f32"]))
    assert _nothing_written(out)
    with pytest.raises(SlmError, match="unknown --pre-tokenizer 'nope'"):
        export(d, out, ExportArgs(gguf=["f32"], pre_tokenizer="nope"))
    # with the override the export goes through and llama.cpp tokenizes like HF on plain text
    res = export(d, out, ExportArgs(gguf=["f32"], pre_tokenizer="gpt-2", n_ctx=32, threads=1))
    assert res["pre_tokenizer"] == "gpt-2"
    assert res["validation"]["gguf"]["f32"]["top1_agree"] == 1.0
    assert not res["validation"].get("failed")


def test_tokenizer_mismatch_fails_validation(tiny, tmp_path, capsys):
    """A Qwen2 model's tokenizer (transformers loads it as Qwen2Tokenizer: one digit per piece) written with
    GPT-2's pre-tokenizer (digit runs whole), like a Qwen2 with a SmolLM2 tokenizer: llama.cpp encodes numbers
    differently, and validation fails — in the result, the figures and the CLI's exit status."""
    from slm.cli import main

    d = _with_bpe_tokenizer(tiny("qwen2", vocab_size=300), regex_digits=False,
                            extra="numbers 3 33 333 3333 1,000,000 " * 3000)
    res = export(d, tmp_path / "out", ExportArgs(gguf=["f32"], pre_tokenizer="gpt-2", n_ctx=32, threads=1))
    tok = res["validation"]["tokenizer"]
    assert tok["matching"] < tok["strings"]
    assert "test strings differently from HF" in res["validation"]["failed"]["tokenizer"]
    assert next(f for f in res["figures"] if f.name == "validation_failures").value == 1
    assert main(["export", str(d), "--gguf", "f32", "--pre-tokenizer", "gpt-2", "--threads", "1", "-o",
                 str(tmp_path / "cli")]) == 1
    assert "validation failed: tokenizer" in capsys.readouterr().err


def test_imatrix_from_calibration_text(tiny, tmp_path):
    """--imatrix TEXT: the importance matrix is computed from the text and unlocks imatrix-only types."""
    d = _with_bpe_tokenizer(tiny("llama", vocab_size=300), regex_digits=False)
    calib = tmp_path / "calib.txt"
    calib.write_text(rt.HELD_OUT_TEXT)
    res = export(d, tmp_path / "out",
                 ExportArgs(gguf=["iq2_xs"], imatrix=str(calib), validate=False, threads=1,
                            pre_tokenizer="gpt-2"))
    assert res["imatrix"] and res["files"][0]["type"] == "iq2_xs"
    log = (tmp_path / "out" / "logs" / "quantize-iq2_xs.log").read_text()
    # 6 layers × 7 matrices + the untied lm_head, all handed to llama.cpp
    assert "have importance matrix data with 43 entries" in log


def test_cli_export(tiny, tmp_path, capsys):
    from slm.cli import main

    d = tiny("qwen2")
    out = tmp_path / "cli-out"
    assert main(["export", str(d), "--gguf", "q8_0,f16", "-o", str(out), "--no-validate",
                 "--threads", "1"]) == 0
    assert (out / f"{d.name}-q8_0.gguf").is_file() and (out / f"{d.name}-f16.gguf").is_file()
    assert "q8_0" in capsys.readouterr().out
    assert main(["export", str(d), "--gguf", "q7_k", "-o", str(tmp_path / "x")]) == 2
    assert "unknown GGUF type 'q7_k'" in capsys.readouterr().err
    # exists, no --force
    assert main(["export", str(d), "--gguf", "q8_0", "-o", str(out), "--no-validate"]) == 2


@pytest.mark.parametrize("kind,tied", [("llama", False), ("qwen3", True)])
def test_written_header_reads_back_as_the_spec(tiny, tmp_path, kind, tied):
    """slm.gguf reads our writer's files: every tensor, its type, and the same shape numbers as
    config.json."""
    from slm.gguf import contents, read_header
    from slm.spec import load_spec, spec_from_gguf

    d = tiny(kind, tied=tied)
    p = write_gguf(d, tmp_path / "m.gguf", "f16")
    h = read_header(p)
    assert {t.ggml_type for t in h.tensors if len(t.shape) == 2} == {"F16"}
    assert {t.ggml_type for t in h.tensors if len(t.shape) == 1} == {"F32"}  # norms stay F32
    want, got = load_spec(d), spec_from_gguf(p)
    for f in ("model_type", "layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab",
              "max_context", "tied", "qk_norm"):
        assert getattr(got, f) == getattr(want, f), f
    assert contents(h)["params"] == want.params
