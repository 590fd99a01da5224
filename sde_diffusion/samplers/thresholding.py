"""Thresholding of the data prediction (Saharia et al. 2022, Imagen, Sec. 2.3): ``x0`` corrections
for :func:`~sde_diffusion.samplers.driver.sample_on_grid`, usable with every sampler that forms a
data prediction, guided or not.

Static thresholding clips ``x0_hat`` to the data range ``[lo, hi]``. Dynamic thresholding, with the
range mapped to ``[-1, 1]`` (``u = (x0_hat - c) / r``, centre ``c``, half-width ``r``), takes per
sample ``q = max(1, quantile(|u|, p))`` over all of its coordinates, clips ``u`` to ``[-q, q]`` and
divides by ``q``: saturated predictions (strong guidance) are pushed back inside the range instead of
piling up at its edges. Predictions inside the range are unchanged by both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_range

KINDS = ("none", "static", "dynamic")


class StaticThreshold:
    """``x0_hat -> clamp(x0_hat, lo, hi)`` for ``data_range = (lo, hi)``."""

    def __init__(self, data_range: tuple[float, float] = (-1.0, 1.0)):
        self.lo, self.hi = _check_data_range(data_range)

    def __call__(self, x0: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return x0.clamp(self.lo, self.hi)

    def __repr__(self) -> str:
        return f"StaticThreshold(data_range=({self.lo}, {self.hi}))"


class DynamicThreshold:
    """Imagen's dynamic thresholding at percentile ``p`` (Saharia et al. 2022: ``p = 0.995``) on
    ``data_range = (lo, hi)``; see the module docstring."""

    def __init__(self, percentile: float = 0.995, data_range: tuple[float, float] = (-1.0, 1.0)):
        self.percentile = check_range("percentile", percentile, low=0.0, high=1.0, low_open=True, hint="Imagen uses 0.995")
        self.lo, self.hi = _check_data_range(data_range)

    def __call__(self, x0: Tensor, x: Tensor, t: Tensor) -> Tensor:
        centre, half = 0.5 * (self.hi + self.lo), 0.5 * (self.hi - self.lo)
        u = (x0 - centre) / half
        q = u.flatten(1).abs().quantile(self.percentile, dim=1).clamp(min=1.0)
        q = q.reshape(-1, *([1] * (u.dim() - 1)))
        # where q = 1 this is a clamp; taking it directly keeps in-range values bit for bit
        # (centre + half * u does not round-trip exactly off [-1, 1])
        return torch.where(q == 1, x0.clamp(self.lo, self.hi), centre + half * (u.clamp(-q, q) / q))

    def __repr__(self) -> str:
        return f"DynamicThreshold(percentile={self.percentile}, data_range=({self.lo}, {self.hi}))"


def _check_data_range(data_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be two numbers [lo, hi], got {data_range!r}") from None
    if not lo < hi:
        raise ValueError(f"data_range must have lo < hi, got [{lo}, {hi}]")
    return lo, hi


def thresholding(
    kind: str, percentile: float = 0.995, data_range: tuple[float, float] = (-1.0, 1.0)
) -> StaticThreshold | DynamicThreshold | None:
    """The ``x0`` correction named by ``kind`` (``none``, ``static`` or ``dynamic``; None for none)."""
    if kind not in KINDS:
        raise ValueError(f"thresholding must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "static":
        return StaticThreshold(data_range)
    if kind == "dynamic":
        return DynamicThreshold(percentile, data_range)
    return None
