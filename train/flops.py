"""Training FLOPs per token and MFU, with frozen blocks costed as below.

Per block, forward FLOPs per token = 2 × (block matmul parameters) + attention scores 4 × T × (heads ×
head_dim) (QKᵀ and A·V, PaLM's 12·L·H·Q·T for fwd+bwd, Chowdhery et al. 2022, App. B; causal halving not
applied). Backward costs forward × 1 for the input gradient and × 1 for the weight gradient, so:
blocks below the lowest trainable one: forward only (×1); frozen blocks above it: forward + input
gradient (×2); trainable blocks: ×3. LoRA layers count as frozen (adapters are negligible). The LM head
costs ×2 (its input gradient is needed) unless it trains (×3). Embedding lookups are free.
"""

from __future__ import annotations

from slm.spec import ModelSpec

# Dense bf16 tensor-core peaks (vendor datasheets): H100 SXM 989 TFLOP/s, H100 PCIe 756, H200 989, A100 312.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12,
             "A10": 125e12}


def flops_per_token(spec: ModelSpec, seq_len: int, trainable: list[int], full: bool,
                    lora: bool = False) -> float:
    """Training FLOPs per input token (forward + backward). `trainable`: layers whose weights change (for
    LoRA, the layers with adapters: they need gradients below them but count as frozen themselves)."""
    h, heads, hd = spec.hidden, spec.heads, spec.head_dim
    # q, o; k, v; MLP
    layer_params = h * heads * hd * 2 + 2 * h * spec.kv_heads * hd + 3 * h * spec.intermediate
    fwd_layer = 2 * layer_params + 4 * seq_len * heads * hd
    lowest = min(trainable) if trainable else spec.layers
    total = 0.0
    for i in range(spec.layers):
        mult = 3 if i in trainable and not lora else (2 if i >= lowest else 1)
        total += mult * fwd_layer
    head = 2 * h * spec.vocab
    total += head * (3 if full else 2)
    return total


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak for a CUDA device name, or None if unknown (MFU is then not reported)."""
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16[key]
    return None
