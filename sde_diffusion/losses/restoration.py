"""The training loss of cold diffusion's restoration network (Bansal et al. 2022, Eq. 1)."""

from __future__ import annotations

import torch
from torch import Tensor


def restoration_loss(restore, degradation, x0: Tensor, *, norm: str = "l1", generator: torch.Generator | None = None) -> Tensor:
    """``|| R(D(x0, t), t) - x0 ||`` per sample ``(B,)``, ``t ~ U(0, 1]``, summed over the data
    dimensions: ``norm="l1"`` (Bansal et al.'s choice) or ``"l2"`` (squared).

    ``restore(x, t) -> x0_hat``; ``degradation(x, t)`` as in :mod:`sde_diffusion.degradations`;
    ``x0`` ``(B, *dims)``.
    """
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    t = 1.0 - torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)  # (0, 1]
    with torch.no_grad():
        x_t = degradation(x0, t)
    residual = (restore(x_t, t) - x0).reshape(x0.shape[0], -1)
    return residual.abs().sum(dim=1) if norm == "l1" else residual.pow(2).sum(dim=1)


class RestorationLoss:
    """``loss_fn(restore, sde, x0, generator=...) -> (B,)``: :func:`restoration_loss` under
    ``degradation``, in the Trainer's loss signature. The degradation is the forward process of a cold
    diffusion run, so the SDE the Trainer passes plays no part."""

    def __init__(self, degradation, norm: str = "l1"):
        if not callable(degradation):
            raise ValueError(f"degradation must be a callable D(x, t), e.g. sde_diffusion.degradations.GaussianBlur(), got {degradation!r}")
        if norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
        self.degradation, self.norm = degradation, norm

    def __call__(self, restore, sde, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return restoration_loss(restore, self.degradation, x0, norm=self.norm, generator=generator)

    def __repr__(self) -> str:
        return f"RestorationLoss({self.degradation!r}, norm={self.norm!r})"
