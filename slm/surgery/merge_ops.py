"""The per-tensor arithmetic of merges, apart from the streaming in merge.py: dot products accumulated in
float64 without a float64 copy, SLERP (Shoemake 1985, as in mergekit), and a per-layer t spread over depth."""

from __future__ import annotations

import math

import numpy as np
import torch


def dot64(a: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 20) -> float:
    """Σ a·b accumulated in float64 chunk by chunk, so no float64 copy of a large tensor is ever made."""
    a, b = a.reshape(-1), b.reshape(-1)
    return float(sum(torch.dot(a[i:i + chunk].double(), b[i:i + chunk].double())
                     for i in range(0, a.numel(), chunk)))


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation of two tensors treated as flat vectors (Shoemake 1985; as in mergekit).
    t=0 and t=1 return the inputs exactly."""
    if t == 0.0:
        return v0.clone()
    if t == 1.0:
        return v1.clone()
    n0, n1 = math.sqrt(dot64(v0, v0)), math.sqrt(dot64(v1, v1))
    dot = dot64(v0, v1) / (n0 * n1) if n0 and n1 else 1.0
    if abs(dot) > eps:  # nearly colinear (or a zero tensor): slerp is unstable there and equals lerp anyway
        s0, s1 = 1 - t, t
    else:
        theta = math.acos(max(-1.0, min(1.0, dot)))
        s0 = math.sin((1 - t) * theta) / math.sin(theta)
        s1 = math.sin(t * theta) / math.sin(theta)
    return torch.add(v0 * s0, v1, alpha=s1)


def t_for_layer(t: float | list, layer: int | None, n_layers: int) -> float:
    """A scalar t, or a list spread over depth: layer i takes np.interp(i/(L−1), linspace(0,1,len), list).
    Embeddings take the first value, the final norm and lm_head the last."""
    if not isinstance(t, list):
        return float(t)
    if len(t) == 1:
        return float(t[0])
    x = 0.0 if layer is None else layer / max(n_layers - 1, 1)
    return float(np.interp(x, np.linspace(0, 1, len(t)), [float(v) for v in t]))
