"""Discrete data: uniform dequantization, bits per dimension, and nats per dimension.

Convention: discrete data with ``K`` levels per dimension on the interval ``[low, high)`` of width
``w = high - low`` are the LEFT EDGES of ``K`` bins of width ``w / K``: level ``k`` is the value
``low + k w / K``, ``k = 0, ..., K - 1``. Uniform dequantization ``y = x + u w / K``,
``u ~ U[0, 1)^D``, spreads each level over its own bin, so a continuous density ``p`` on
``[low, high)^D`` gives the discrete model ``P(x) = int_bin p >= (w / K)^D exp E_u[log p(y)]``
(Jensen; Theis et al. 2016, Ho et al. 2019). In bits per dimension,

    bpd(x) = (-log p(y) / D + log(K / w)) / ln 2,

an upper bound on ``-log2 P(x) / D`` in expectation over ``u``. The offset ``log2(K / w)`` is derived
from ``K`` and ``w``: 7 bits for 8-bit data in ``[-1, 1]``, 8 bits in ``[0, 1]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_range


def _check_discretization(levels: int, interval: tuple[float, float]) -> tuple[float, float]:
    check_range("levels", levels, low=2, integer=True, hint="256 for 8-bit data")
    low, high = (float(v) for v in interval)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"interval must be finite (low, high) with low < high, e.g. (-1, 1); got {interval}")
    return low, high - low


def dequantization_offset(levels: int, interval: tuple[float, float] = (-1.0, 1.0)) -> float:
    """``log2(K / w)`` in bits: what dequantization into bins of width ``w / K`` adds to ``-log2 p / D``."""
    _, width = _check_discretization(levels, interval)
    return math.log2(levels / width)


def dequantize(
    x: Tensor,
    levels: int,
    interval: tuple[float, float] = (-1.0, 1.0),
    *,
    n_dequant: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform dequantization ``y = x + u w / K``, ``u ~ U[0, 1)``, of left-edge data ``x``.

    Args:
        x: ``(B, *dims)`` values ``low + k w / K`` with integer ``k`` in ``[0, K)`` (checked).
        levels: ``K``; interval: ``(low, high)``, ``w = high - low``.
        n_dequant: independent draws per point.
    Returns: ``(n_dequant * B, *dims)``, draw-major: rows ``j B .. (j + 1) B - 1`` are draw ``j``.
    """
    low, width = _check_discretization(levels, interval)
    check_range("n_dequant", n_dequant, low=0, low_open=True, integer=True)
    k = (x - low) * (levels / width)
    rounding = max(1e-3, 16 * torch.finfo(x.dtype).eps * levels)  # in bins; float32 holds k to ~1e-5
    off_grid = (k - k.round()).abs() > rounding
    out_of_range = (k.round() < 0) | (k.round() > levels - 1)
    if (off_grid | out_of_range).any():
        bad = x[off_grid | out_of_range][0].item()
        raise ValueError(
            f"dequantize expects the left bin edges low + k * w / K with k in 0..{levels - 1} "
            f"(K={levels}, interval {interval}); got the value {bad}. Data scaled as k / (K - 1) "
            f"(both ends included) must first be mapped to low + k * (high - low) / K."
        )
    u = torch.rand((int(n_dequant), *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    return (x + u * (width / levels)).flatten(0, 1)


def nats_per_dim(logp: Tensor, dim: int) -> Tensor:
    """Negative log-likelihood per dimension, ``-log p / D`` in nats, for continuous data."""
    return -logp / dim


def bits_per_dim(
    logp: Tensor,
    dim: int,
    levels: int,
    interval: tuple[float, float] = (-1.0, 1.0),
    *,
    n_dequant: int = 1,
) -> Tensor:
    """``(-log p(y) / D + log(K / w)) / ln 2`` of dequantized discrete data, per point.

    Args:
        logp: ``(n_dequant * B,)`` log-densities in nats of the draws of :func:`dequantize`
            (draw-major); the draws of each point are averaged.
        dim: ``D``, the number of dimensions of one sample.
    Returns: ``(B,)`` bits per dimension.
    """
    if logp.dim() != 1 or logp.shape[0] % n_dequant:
        raise ValueError(f"logp must have shape (n_dequant * B,) = ({n_dequant} * B,), got {tuple(logp.shape)}")
    offset = dequantization_offset(levels, interval)
    per_draw = nats_per_dim(logp, dim) / math.log(2.0) + offset
    return per_draw.reshape(int(n_dequant), -1).mean(0)
