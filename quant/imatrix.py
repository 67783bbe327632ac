"""Importance matrix from a calibration text, for llama.cpp's quantizer.

llama-imatrix stores, for every weight matrix, the mean over calibration tokens of the squared input
activation of each input column (sums / counts in tools/imatrix/imatrix.cpp; quantize.cpp divides them
back to a mean). We compute the same with forward hooks on the HF model's linear layers and key it by the
GGUF tensor name, which is what `llama_model_imatrix_data` expects. Q/K row permutation does not matter:
the vector runs over input columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slm.errors import SlmError


def compute_imatrix(model_dir: Path, text: str | None, arch: str, n_ctx: int = 512, max_tokens: int = 8192,
                    ids: list[int] | None = None) -> dict:
    """{gguf tensor name: float32 vector of mean x² per input column} over up to max_tokens of `text`
    (or of token `ids`, for checkpoints without a tokenizer)."""
    import torch  # torch: deferred, a heavy import

    from slm.io import load_model  # torch: deferred, a heavy import

    from .gguf_write import tensor_name_map  # torch: deferred, a heavy import

    if ids is None:
        from transformers import AutoTokenizer  # transformers: deferred, a heavy import

        if not (text or "").strip():
            raise SlmError("the --imatrix calibration text is empty: pass a text file with a few thousand "
                           "tokens")
        ids = AutoTokenizer.from_pretrained(str(model_dir)).encode(text)
    ids = list(ids)[:max_tokens]
    model = load_model(model_dir, "float32").eval()
    tmap = tensor_name_map(arch, model.config.num_hidden_layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            gname = tmap.get_name(f"{name}.weight", try_suffixes=(".weight",))
            if gname is None:
                continue

            def hook(m, inputs, out, gname=gname):
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
                sums[gname] = sums.get(gname, 0) + (x * x).sum(0)
                counts[gname] = counts.get(gname, 0) + x.shape[0]

            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for i in range(0, len(ids), n_ctx):
                model(torch.tensor([ids[i:i + n_ctx]]))
    finally:
        for h in hooks:
            h.remove()
    # Tied embeddings: lm_head has no tensor of its own in the GGUF (llama.cpp reuses token_embd).
    if model.config.tie_word_embeddings:
        sums.pop("output.weight", None)
    return {k: (v / counts[k]).float().numpy().astype(np.float32) for k, v in sums.items()}
