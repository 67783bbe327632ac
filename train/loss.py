"""The training loss without full-vocabulary fp32 logits: the LM head and cross-entropy run together, by
chunks of tokens, so the head's peak memory is chunk × vocab instead of tokens × vocab (in fp32, twice: logits
and their gradient).

- chunked: `ChunkedLinearCE` computes, per chunk, the logits, the summed cross-entropy of the labelled tokens
  and — in the forward pass, as Liger-Kernel's fused linear cross-entropy does (Hsu et al. 2024, "Liger
  Kernel", §3.2) — the gradients of the hidden states and of the head weight; backward only scales them by the
  incoming gradient. No logits are kept and nothing is recomputed.
- liger: Liger-Kernel's Triton `LigerFusedLinearCrossEntropyLoss` (CUDA; `pip install liger-kernel`).
- plain: the model's logits, then F.cross_entropy in fp32: the reference.

The head is swapped for `LossHead`, which holds the very same Parameter objects (so state-dict names, weight
tying and FSDP2 sharding are unchanged) and runs inside the model's forward (so FSDP2 has the head unsharded
when it runs). With `labels` set for one call it returns the summed loss in place of the logits; otherwise it
is the plain linear head (evaluation, generation).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from slm.errors import SlmError

from .pack import IGNORE

CHUNK_BYTES = 256 * 2**20  # fp32 logits of one chunk: tokens per chunk = CHUNK_BYTES / (4 × vocab)


def has_liger() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def check_loss(loss: str, device: torch.device) -> str:
    """The resolved loss (auto → liger on CUDA when installed, else chunked), or a one-line SlmError naming
    the fix."""
    if loss == "auto":
        return "liger" if device.type == "cuda" and has_liger() else "chunked"
    if loss == "liger" and not has_liger():
        raise SlmError("loss=liger needs liger-kernel: `pip install liger-kernel` (CUDA), or use "
                       "loss=chunked")
    if loss == "liger" and device.type != "cuda":
        raise SlmError("loss=liger runs on CUDA only (Triton kernels): use loss=chunked (or auto) on CPU")
    return loss


class ChunkedLinearCE(torch.autograd.Function):
    """sum over labelled tokens of CE(h @ wᵀ, y), by chunks of `chunk` rows; gradients computed in forward."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        gh = torch.empty_like(h) if need_h else None
        gw = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        for s in range(0, h.shape[0], chunk):
            hc, yc = h[s:s + chunk], labels[s:s + chunk]
            logits = (hc @ w.t()).float()  # bf16 matmul under autocast, fp32 softmax
            keep = yc != IGNORE
            target = yc.clamp(min=0)
            lse = torch.logsumexp(logits, -1)
            picked = logits.gather(1, target[:, None])[:, 0]
            total += torch.where(keep, lse - picked, 0.0).sum()
            if need_h or need_w:
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                g[torch.arange(len(yc), device=g.device), target] -= 1.0
                g.mul_(keep[:, None])  # ignored tokens: no gradient
                g = g.to(hc.dtype) if hc.dtype != torch.float32 else g
                if need_h:
                    gh[s:s + chunk] = g @ w.to(g.dtype)
                if need_w:
                    gw += (g.t() @ hc.to(g.dtype)).float()
        ctx.save_for_backward(gh, gw)
        ctx.w_dtype = w.dtype
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gh, gw = ctx.saved_tensors
        return (gh * grad.to(gh.dtype) if gh is not None else None,
                (gw * grad).to(ctx.w_dtype) if gw is not None else None, None, None)


def chunked_cross_entropy(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor,
                          chunk: int | None = None) -> torch.Tensor:
    """Summed next-token CE of h (N×H) through the head w (V×H) against labels (N, IGNORE skipped)."""
    chunk = chunk or max(64, CHUNK_BYTES // (4 * w.shape[0]))
    return ChunkedLinearCE.apply(h, w, labels, chunk)


class LossHead(torch.nn.Module):
    """Stands in for `lm_head`, with its Parameters: labels set → summed loss; no labels → logits."""

    def __init__(self, head: torch.nn.Linear, kind: str, chunk: int | None = None):
        super().__init__()
        if head.bias is not None:
            raise SlmError("loss=chunked/liger needs an LM head without bias: use loss=plain")
        self.weight = head.weight  # the same Parameter: tying and state-dict names are unchanged
        self.in_features, self.out_features = head.in_features, head.out_features
        self.kind, self.chunk = kind, chunk
        self.labels: torch.Tensor | None = None  # set by micro_loss for exactly one forward call
        self._liger = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        labels, self.labels = self.labels, None
        if labels is None:
            return F.linear(h, self.weight)
        h, labels = h.flatten(0, -2), labels.flatten()
        if self.kind == "liger":
            if self._liger is None:
                # liger_kernel is optional: imported only when used
                from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

                self._liger = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")
            return self._liger(self.weight, h, labels)
        return chunked_cross_entropy(h, self.weight, labels, self.chunk)


def install_loss_head(hf, kind: str) -> LossHead | None:
    """Swap the transformers model's lm_head for a LossHead (kind chunked / liger); None for plain."""
    if kind == "plain":
        return None
    head = LossHead(hf.lm_head, kind)
    hf.lm_head = head
    return head


def micro_loss(model, head: LossHead | None, batch: dict, device: torch.device, attn_inputs,
               autocast: bool) -> torch.Tensor:
    """Summed next-token CE over the labelled tokens of one micro-batch (the loop divides by the global
    count)."""
    ids, labels, pos = (attn_inputs.rows(batch[k].to(device, non_blocking=True))
                        for k in ("input_ids", "labels", "position_ids"))
    kw = {"position_ids": pos, **attn_inputs(batch["segments"].to(device, non_blocking=True))}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        if head is not None:
            head.labels = labels
            return model(input_ids=ids, **kw).logits  # LossHead returned the summed loss in place of logits
        logits = model(input_ids=ids, **kw).logits
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                           reduction="sum")
