"""Training FLOPs per token and MFU, with frozen blocks costed as below.

Per block, forward FLOPs per token come from ModelSpec.block_forward_flops (2 × matmul parameters + attention
4 × T × heads × head_dim). Backward costs forward × 1 for the input gradient and × 1 for the weight gradient,
so: blocks below the lowest trainable one: forward only (×1); frozen blocks above it: forward + input gradient
(×2); trainable blocks: ×3. LoRA layers count as frozen (adapters are negligible). The LM head costs ×2 (its
input gradient is needed) unless it trains (×3). Embedding lookups are free.
"""

from __future__ import annotations

from slm.spec import ModelSpec

# Dense bf16 tensor-core peaks (vendor datasheets): H100 SXM 989 TFLOP/s, H100 PCIe 756, H200 989, A100 312.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12,
             "A10": 125e12}


def flops_per_token(spec: ModelSpec, seq_len: int, trainable: list[int], full: bool,
                    lora: bool = False) -> float:
    """Training FLOPs per input token (forward + backward), from ModelSpec's forward FLOP model. `trainable`:
    layers whose weights change (for LoRA, the layers with adapters: they need gradients below them but count
    as frozen themselves)."""
    block = spec.block_forward_flops(seq_len)
    lowest = min(trainable) if trainable else spec.layers
    mults = (3 if i in trainable and not lora else (2 if i >= lowest else 1) for i in range(spec.layers))
    return sum(mults) * block + spec.head_flops() * (3 if full else 2)


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak for a CUDA device name, or None if unknown (MFU is then not reported)."""
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16[key]
    return None
