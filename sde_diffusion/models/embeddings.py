"""Time embeddings: map per-sample times ``t`` of shape ``(B,)`` to features ``(B, dim)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_range


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features ``[sin(2 pi w t), cos(2 pi w t)]`` with fixed ``w ~ N(0, scale^2)``.

    Tancik et al. 2020; used for continuous time in Song et al. 2021 (NCSN++). ``w`` is a buffer,
    so it is saved in checkpoints and seeded by the global RNG at construction.
    """

    freqs: Tensor  # a registered buffer (nn.Module's attribute lookup is typed Tensor | Module)

    def __init__(self, dim: int = 64, scale: float = 16.0):
        super().__init__()
        if check_range("time embedding dim", dim, low=2, integer=True) % 2:
            raise ValueError(f"time embedding dim must be an even number >= 2, got {dim}")
        check_range("Fourier scale", scale, low=0.0, low_open=True)
        self.dim = dim
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        arg = 2.0 * math.pi * t[:, None] * self.freqs.to(t.dtype)
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class SinusoidalEmbedding(nn.Module):
    """Transformer positional features of ``max_period_scale * t`` (Vaswani et al. 2017; DDPM).

    Frequencies are geometric from 1 to ``1 / max_period``; ``t`` in [0, 1] is scaled by
    ``time_scale`` (1000 maps it onto DDPM's integer steps).
    """

    freqs: Tensor  # a registered buffer (nn.Module's attribute lookup is typed Tensor | Module)

    def __init__(self, dim: int = 64, time_scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"time embedding dim must be an even number >= 2, got {dim}")
        self.dim = dim
        self.time_scale = float(time_scale)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half) / half)
        self.register_buffer("freqs", freqs)

    def forward(self, t: Tensor) -> Tensor:
        arg = self.time_scale * t[:, None] * self.freqs.to(t.dtype)
        return torch.cat([arg.sin(), arg.cos()], dim=1)
