"""EDM's sigma-time SDE: time is the noise level, ``x_t = x_0 + t z`` (Karras et al. 2022)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .gaussian_path import GaussianPathSDE


class EDMSDE(GaussianPathSDE):
    """The path ``m(t) = 1``, ``s(t) = t`` on ``[0, sigma_max]``: time is EDM's noise level sigma
    (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Eq. 4
    and Table 1 with ``sigma(t) = t``, ``s(t) = 1``).

    Derived SDE: ``dx = sqrt(2 t) dw`` (``d s^2/dt = 2 t``, no drift), so the probability-flow ODE is
    ``dx/dt = -t score(x, t)``, EDM's Eq. 1. ``T = sigma_max``; the prior is ``N(0, sigma_max^2 I)``.
    ``sigma_min`` is the smallest noise level samplers should stop at: pass it as ``eps`` to the
    time grids (``edm_time_grid(sde, n, eps=sde.sigma_min)`` is EDM's sampling schedule). Defaults
    sigma_min = 0.002, sigma_max = 80 (EDM's).

    The times are noise levels, so a network's time embedding sees values up to ``sigma_max``: EDM
    feeds its networks ``log(sigma) / 4`` instead. The log-SNR is ``-2 log t``, inverted in closed form.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        sigma_min, sigma_max = float(sigma_min), float(sigma_max)
        if not (math.isfinite(sigma_min) and math.isfinite(sigma_max)) or not 0.0 < sigma_min < sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, both finite; got sigma_min={sigma_min}, sigma_max={sigma_max} "
                f"(EDM's defaults are 0.002 and 80)"
            )
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.T = sigma_max

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def mean_coeff(self, t: Tensor) -> Tensor:
        return torch.ones_like(torch.as_tensor(t))

    def std(self, t: Tensor) -> Tensor:
        return torch.as_tensor(t) * 1.0

    def log_mean_coeff_rate(self, t: Tensor) -> Tensor:
        return torch.zeros_like(torch.as_tensor(t))

    def variance_rate(self, t: Tensor) -> Tensor:
        return 2.0 * torch.as_tensor(t)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:  # zero: skip the product with the zero rate
        return torch.zeros_like(x)

    def time_from_log_snr(self, log_snr: Tensor, eps: float = 0.0, *, iterations: int = 60) -> Tensor:
        """``t = exp(-lambda / 2)``, clamped to ``[eps, T]`` (float64, like the generic bisection)."""
        t = torch.exp(-0.5 * torch.as_tensor(log_snr, dtype=torch.float64))
        return t.clamp(min=eps, max=self.T)

    def __repr__(self) -> str:
        return f"EDMSDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"
