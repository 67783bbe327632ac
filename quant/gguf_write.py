"""Write an HF Llama-family checkpoint as a GGUF file (F32, F16 or BF16), streaming one tensor at a time.

Follows llama.cpp's own converter (convert_hf_to_gguf.py, conversion/{base,llama,qwen}.py as vendored by
llama-cpp-python 0.3.36): the same metadata keys, gguf-py's tensor name map, the Q/K row permutation for
the `llama` architecture only, 1-D tensors (norms, biases) kept F32, and the tokenizer written the same way
(BPE → `gpt2` + pre-tokenizer name from the hash table; SentencePiece → `llama`). We write the file
ourselves instead of running the converter so that tensors stream from slm.io.TensorReader (the converter
holds lazy tensors of the whole model) and so errors are caught before any byte is written.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path

import gguf
import numpy as np
import torch

from slm.errors import SlmError
from slm.gguf import HF_CONFIG_KEY
from slm.gguf import QK_PERMUTED_ARCHS as PERMUTED
from slm.io import TensorReader, read_config
from slm.spec import ModelSpec, spec_from_config

from .gguf_arch import ARCHS, plan_arch, rope_freqs, rope_params  # noqa: F401  (ARCHS: re-exported)
from .pretok_hashes import CHKTXT, PRE_TOKENIZERS

# file types llama.cpp records in general.file_type (enum llama_ftype)
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32}
KNOWN_PRE = sorted({v[0] for v in PRE_TOKENIZERS.values()} | {"default"})
def check_arch(config: dict) -> str:
    """The GGUF architecture for a config, or a one-line SlmError naming what cannot be exported."""
    return plan_arch(config).arch


# ---- tokenizer ----------------------------------------------------------------------------------------
def has_tokenizer(model_dir: Path) -> bool:
    return any((Path(model_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))


class _FastTokenizer:
    """The few calls the converter makes on an HF tokenizer, served by the `tokenizers` library directly:
    transformers' AutoTokenizer costs ~110 MB more resident memory for the same answers (measured)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer  # tokenizers: deferred, a heavy import

        self.tk = Tokenizer.from_file(str(path))
        self.added_tokens_decoder = self.tk.get_added_tokens_decoder()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tk.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self.tk.decode(ids, skip_special_tokens=False)

    def get_vocab(self) -> dict:
        return self.tk.get_vocab(with_added_tokens=True)


def _bpe_tokenizer(model_dir: Path):
    if (model_dir / "tokenizer.json").is_file():
        return _FastTokenizer(model_dir / "tokenizer.json")
    from transformers import AutoTokenizer  # vocab.json + merges.txt only

    return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)


def detect_pre_tokenizer(tokenizer) -> tuple[str | None, str]:
    """(llama.cpp pre-tokenizer name or None if unknown, the hash) — llama.cpp's own detection method."""
    h = sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest()
    hit = PRE_TOKENIZERS.get(h)
    return (hit[0] if hit else None), h


def load_vocab(model_dir: Path, vocab_size: int, pre_tokenizer: str | None = None) -> dict:
    """Everything the tokenizer section of the GGUF needs, computed before the file is opened.

    BPE tokenizers follow the converter's get_vocab_base/_set_vocab_gpt2; a tokenizer.model means
    SentencePiece, written through gguf-py's SentencePieceVocab like _set_vocab_sentencepiece.
    """

    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.model").is_file():
        sp = gguf.SentencePieceVocab(model_dir)
        tokens, scores, types = [], [], []
        for text, score, ttype in sp.all_tokens():
            tokens.append(text), scores.append(score), types.append(ttype)
        # embedding rows beyond the tokenizer: padding, as the converter
        for i in range(len(tokens), vocab_size):
            tokens.append(f"[PAD{i}]".encode()), scores.append(-1000.0), types.append(gguf.TokenType.UNUSED)
        return {"model": "llama", "pre": None, "tokens": tokens, "scores": scores, "types": types,
                "hash": None}

    tok = _bpe_tokenizer(model_dir)
    name, h = detect_pre_tokenizer(tok)
    if pre_tokenizer:
        if pre_tokenizer not in KNOWN_PRE:
            raise SlmError(f"unknown --pre-tokenizer {pre_tokenizer!r}: llama.cpp knows "
                           f"{', '.join(KNOWN_PRE)}")
        name = pre_tokenizer
    if name is None:
        raise SlmError(f"the tokenizer of {model_dir.name} has a pre-tokenizer llama.cpp's table does not "
                       f"know (hash {h[:12]}…): pass --pre-tokenizer NAME with the closest one (e.g. "
                       f"llama-bpe, qwen2, smollm, gpt-2) after checking its regex in llama.cpp's "
                       f"llama-vocab.cpp")
    vocab = tok.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise SlmError(f"tokenizer has ids up to {max(vocab.values())} but the model has only {vocab_size} "
                       "embedding rows: the tokenizer does not belong to this model")
    reverse = {i: t for t, i in vocab.items()}
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]"), types.append(gguf.TokenType.UNUSED)
            continue
        t = reverse[i]
        if i in decoder:
            # llama.cpp assumes added tokens are pre-normalized (converter comment): round-trip them.
            if not decoder[i].normalized:
                t = tok.decode(tok.encode(t, add_special_tokens=False))
            special = decoder[i].special or (t.startswith("<|") and t.endswith("|>"))
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(t)
    # Whether HF puts a BOS in front, from its behaviour (GGUF readers otherwise guess per vocab type).
    with_special, plain = tok.encode("a"), tok.encode("a", add_special_tokens=False)
    add_bos = len(with_special) > len(plain) and with_special[1:] == plain[: len(with_special) - 1]
    return {"model": "gpt2", "pre": name, "tokens": tokens, "scores": None, "types": types, "hash": h,
            "add_bos": add_bos}


def add_vocab(w, vocab: dict, model_dir: Path, vocab_size: int) -> None:

    w.add_tokenizer_model(vocab["model"])
    if vocab["pre"]:
        w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    if vocab["scores"] is not None:
        w.add_token_scores(vocab["scores"])
    w.add_token_types(vocab["types"])
    # merges, bos/eos/unk/pad ids, add_bos/add_eos flags and the chat template (chat_template.jinja too)
    special = gguf.SpecialVocab(model_dir, load_merges=vocab["model"] == "gpt2", n_vocab=vocab_size)
    special.add_to_gguf(w, quiet=True)
    if "add_bos" in vocab and "bos" not in special.add_special_token:
        w.add_add_bos_token(vocab["add_bos"])


# ---- metadata -----------------------------------------------------------------------------------------
def add_hparams(w, spec: ModelSpec, config: dict, arch: str, ftype: str, name: str) -> None:
    """The keys TextModel.set_gguf_parameters (+ LlamaModel's) writes for these architectures: shapes from the
    spec, RoPE and norm settings from the config."""

    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_block_count(spec.layers)
    w.add_context_length(spec.max_context)
    w.add_embedding_length(spec.hidden)
    w.add_feed_forward_length(spec.intermediate)
    w.add_head_count(spec.heads)
    w.add_head_count_kv(spec.kv_heads)
    rope = rope_params(config)
    # llama3: no scaling keys, the factors go in the rope_freqs tensor (converter: LlamaModel); dynamic: plain
    # RoPE, exact within the original context (gguf_arch.plan_arch warns)
    if rope.get("rope_type") == "linear" and rope.get("factor"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    elif rope.get("rope_type") == "yarn" and rope.get("factor"):
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    w.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    if config.get("head_dim") is not None:  # the converter writes them only when the config states head_dim
        w.add_key_length(spec.head_dim)
        w.add_value_length(spec.head_dim)
    w.add_file_type(FILE_TYPES[ftype])
    if arch in PERMUTED:  # LlamaModel.set_gguf_parameters adds these two
        w.add_vocab_size(spec.vocab)
        w.add_rope_dimension_count(spec.head_dim)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_string(HF_CONFIG_KEY, json.dumps(config, sort_keys=True))


# ---- tensors ------------------------------------------------------------------------------------------
def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half row order → llama.cpp's interleaved pairs (LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_name_map(arch: str, layers: int):
    """gguf-py's HF → GGUF tensor name map for one of ARCHS' architectures."""

    arch_enum = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
                 "qwen3": gguf.MODEL_ARCH.QWEN3, "smollm3": gguf.MODEL_ARCH.SMOLLM3}[arch]
    return gguf.get_tensor_name_map(arch_enum, layers)


def tensor_plan(reader: TensorReader, spec: ModelSpec, arch: str, ftype: str,
                extra: dict | None = None) -> list[tuple[str | None, str, list[int], str]]:
    """[(hf name, gguf name, shape, gguf dtype)] for every tensor, from the headers alone (nothing loaded);
    `extra` (gguf name → f32 array, e.g. rope_freqs.weight) come first with hf name None."""
    tmap = tensor_name_map(arch, spec.layers)
    plan = [(None, k, list(v.shape), "f32") for k, v in (extra or {}).items()]
    for hf in reader.keys():
        if hf.endswith(".rotary_emb.inv_freq") or (spec.tied and hf == "lm_head.weight"):
            continue  # recomputed by llama.cpp / shared with token_embd when tied
        name = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SlmError(f"tensor {hf} has no GGUF name for architecture {arch}: this checkpoint has parts "
                           "the GGUF writer does not know")
        shape = reader.shape(hf)
        dt = "f32" if len(shape) <= 1 or ftype == "f32" else ftype  # converter: 1-D tensors stay F32
        plan.append((hf, name, shape, dt))
    return plan


def to_numpy(t: torch.Tensor, dt: str) -> np.ndarray:
    if dt == "bf16":  # numpy has no bfloat16: store the raw 16 bits (gguf.quants does the same)
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
    return t.to(torch.float32 if dt == "f32" else torch.float16).contiguous().numpy()


def write_gguf(model_dir: Path | str, out: Path | str, ftype: str = "f32", pre_tokenizer: str | None = None,
               name: str | None = None, vocab: dict | None = None) -> Path:
    """Write `out` (.gguf) from an HF checkpoint folder. `vocab` may be passed in when already loaded."""

    model_dir, out = Path(model_dir), Path(out)
    if ftype not in FILE_TYPES:
        raise SlmError(f"write_gguf writes f32, f16 or bf16, not {ftype!r} (quantized types go through "
                       "quantize)")
    config = read_config(model_dir)
    aplan = plan_arch(config)
    arch = aplan.arch
    spec = spec_from_config(config)
    freqs = rope_freqs(aplan.rope, spec.head_dim)
    extra = {} if freqs is None else {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight": freqs}
    if vocab is None:
        vocab = load_vocab(model_dir, spec.vocab, pre_tokenizer) if has_tokenizer(model_dir) else None
    reader = TensorReader(model_dir)
    try:
        plan = tensor_plan(reader, spec, arch, ftype, extra)
        w = gguf.GGUFWriter(out, arch)
        add_hparams(w, spec, config, arch, ftype, name or model_dir.name)
        if vocab is not None:
            add_vocab(w, vocab, model_dir, spec.vocab)
        else:  # no tokenizer in the checkpoint: llama.cpp's "no vocab" mode (llama-vocab.cpp), ids only
            w.add_tokenizer_model("none")
            if arch != "llama":  # the vocab size then comes from this key (llama already has it)
                w.add_vocab_size(spec.vocab)
        gtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                 "bf16": gguf.GGMLQuantizationType.BF16}
        npdt = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}
        for _, gname, shape, dt in plan:
            nbytes = int(np.prod(shape)) * np.dtype(npdt[dt]).itemsize
            w.add_tensor_info(gname, shape, np.dtype(npdt[dt]), nbytes, raw_dtype=gtype[dt])
        w.write_header_to_file(out)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for hf, gname, _, dt in plan:  # one tensor in memory at a time
            if hf is None:
                w.write_tensor_data(extra[gname])
                continue
            t = reader.get(hf).float()
            if arch in PERMUTED and hf.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
                t = permute_qk(t, spec.heads)
            elif arch in PERMUTED and hf.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
                t = permute_qk(t, spec.kv_heads)
            w.write_tensor_data(to_numpy(t, dt))
            del t
        w.close()
    finally:
        reader.close()
    return out
