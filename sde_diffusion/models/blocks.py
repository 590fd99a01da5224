"""U-Net building blocks on feature maps ``(B, C, H, W)``: a residual block conditioned on an
embedding, self-attention over positions, and 2x down- and upsampling.

They follow DDPM (Ho et al. 2020, App. B) with the DDPM++ changes of Song et al. 2021 (App. H):
residual sums rescaled by ``1 / sqrt(2)`` and the last layer of every residual branch initialised
to zero, so each block starts as a (rescaled) identity.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

_SKIP_RESCALE = 1.0 / math.sqrt(2.0)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm over ``channels`` with the largest group count ``<= min(32, C // 4)`` dividing ``C``
    (DDPM++ uses ``min(C // 4, 32)`` groups; a divisor keeps any channel count valid)."""
    limit = max(1, min(32, channels // 4))
    groups = max(g for g in range(1, limit + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it (the branch starts switched off)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution keeping ``H`` and ``W`` (``stride=2`` halves them: DDPM's downsampling)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    """``(skip(x) + F(x, emb)) / sqrt(2)`` with the residual branch

    ``F = conv(dropout(SiLU(GN(conv(SiLU(GN(x))) + W SiLU(emb)))))``:
    the embedding ``emb`` ``(B, emb_dim)`` (time, plus class) is projected to one bias per channel
    and added after the first convolution (DDPM); ``emb_dim=0`` builds an unconditioned block
    (an autoencoder's), called with ``emb=None``. ``skip`` is a 1x1 convolution when the channel
    count changes. Input ``(B, in_channels, H, W)``, output ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.emb = nn.Linear(emb_dim, out_channels) if emb_dim else None
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(conv3x3(out_channels, out_channels))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None:
            if emb is None:
                raise ValueError("this ResBlock was built with an embedding (emb_dim > 0): pass emb (B, emb_dim)")
            h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.skip(x) + h) * _SKIP_RESCALE


class SelfAttention(nn.Module):
    """``(x + P softmax(Q K^T / sqrt(C)) V) / sqrt(2)`` over the ``H W`` positions, one head
    (DDPM's attention block, Ho et al. 2020; Vaswani et al. 2017, Eq. 1). ``Q, K, V`` are 1x1
    convolutions of ``GN(x)``; the output projection ``P`` starts at zero. ``(B, C, H, W)`` in and out.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)  # (B, HW, C)
        a = F.scaled_dot_product_attention(q, k, v)  # softmax over keys, scaled by 1 / sqrt(C)
        return (x + self.proj(a.transpose(1, 2).reshape(b, c, h, w))) * _SKIP_RESCALE


class ResAttnBlock(nn.Module):
    """A :class:`ResBlock`, followed by :class:`SelfAttention` when ``attention`` is true."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, emb_dim, dropout)
        self.attn = SelfAttention(out_channels) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.res(x, emb)
        return h if self.attn is None else self.attn(h)


class Upsample(nn.Module):
    """Double ``H`` and ``W``: nearest-neighbour upsampling, then a 3x3 convolution (DDPM)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
