"""How packed documents reach attention: one choice (`attn`), checked before any weights are read, and the
per-micro-batch inputs that keep documents apart on that path.

- flex: FlexAttention (torch.nn.attention.flex_attention, PyTorch docs "FlexAttention") with a document-causal
  BlockMask from the segment ids (`create_block_mask`): masked 128×128 blocks are skipped, so document masking
  is a speed-up, not a cost (69.9 k vs 53.1 k tok/s on an H200). transformers ≥ 5 takes the BlockMask as
  `attention_mask` of a model built with attn_implementation="flex_attention" (masking_utils passes a 4-D mask
  through; integrations/flex_attention.py hands a BlockMask to flex_attention as `block_mask`).
- flash: flash-attn's varlen kernels; transformers derives cu_seqlens from position ids that restart at each
  document, so no mask is passed (modeling_flash_attention_utils, "packed sequences").
- sdpa / eager: the dense B×1×T×T additive block-diagonal mask (train/pack.py): the reference.
"""

from __future__ import annotations

import importlib.util

import torch

from slm.errors import SlmError

from .pack import block_causal_mask

HF_NAME = {"flex": "flex_attention", "flash": "flash_attention_2", "sdpa": "sdpa", "eager": "eager"}


def has_flash() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def has_flex() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_attn(attn: str, device: torch.device) -> str:
    """The path `attn` means on `device`: auto → flash (CUDA, flash-attn installed), flex (CUDA), sdpa
    (CPU)."""
    if attn != "auto":
        return attn
    if device.type == "cuda":
        return "flash" if has_flash() else "flex"
    return "sdpa"


def check_attn(attn: str, device: torch.device) -> str:
    """The resolved path, or a one-line SlmError naming the fix (set_up: before any weights are read)."""
    path = resolve_attn(attn, device)
    if path == "flash" and not has_flash():
        raise SlmError("attn=flash needs flash-attn: `pip install flash-attn --no-build-isolation` on a CUDA "
                       "machine, or use attn=flex (CUDA) or attn=sdpa")
    if path == "flash" and device.type != "cuda":
        raise SlmError("attn=flash runs on CUDA only: use attn=sdpa (or auto) on CPU")
    if path == "flex" and not has_flex():
        raise SlmError(f"attn=flex needs torch.nn.attention.flex_attention (torch ≥ 2.5; this is torch "
                       f"{torch.__version__}): upgrade torch or use attn=sdpa")
    # torch raises "FlexAttention does not support backward on CPU"
    if path == "flex" and device.type != "cuda":
        raise SlmError("attn=flex trains on CUDA only (FlexAttention has no backward on CPU): use attn=sdpa "
                       "(or auto) on CPU")
    return path


class AttnInputs:
    """Segment ids of a micro-batch → the keyword arguments that isolate its documents on `path`. The flex
    BlockMask is built once per distinct packing and reused while the packing repeats (held-out sets, SFT
    bins)."""

    def __init__(self, path: str, dtype: torch.dtype):
        self.path, self.dtype = path, dtype  # dtype of the dense additive mask (sdpa / eager)
        self._segments: torch.Tensor | None = None
        self._block_mask = None
        self.built = 0  # BlockMasks built (the cache is tested)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """flash: the micro-batch as one row — transformers finds packed documents from position ids only when
        the batch is a single row (modeling_flash_attention_utils._is_packed_sequence); each row starts at
        position 0, so every row stays its own document(s). Other paths: unchanged."""
        return x.reshape(1, -1) if self.path == "flash" else x

    def __call__(self, segments: torch.Tensor) -> dict:
        if self.path == "flash":
            return {}  # position ids alone: varlen attention per document
        if self.path == "flex":
            return {"attention_mask": self.block_mask(segments)}
        return {"attention_mask": block_causal_mask(segments, self.dtype)}

    def block_mask(self, segments: torch.Tensor):
        cached = self._segments
        if cached is not None and cached.shape == segments.shape and cached.device == segments.device \
                and torch.equal(cached, segments):
            return self._block_mask
        self._segments, self._block_mask = segments.clone(), document_block_mask(segments)
        self.built += 1
        return self._block_mask


def document_block_mask(segments: torch.Tensor):
    """BlockMask (B×1×T×T): query i sees key j when both lie in the same document and j ≤ i (FlexAttention
    docs, "document masking"); the head dimension is broadcast (H=None)."""
    from torch.nn.attention.flex_attention import create_block_mask  # torch: deferred, a heavy import

    def document_causal(b, h, q, k):
        return (segments[b, q] == segments[b, k]) & (k <= q)

    n, t = segments.shape
    return create_block_mask(document_causal, n, None, t, t, device=segments.device)
