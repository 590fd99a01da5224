"""Variance-exploding SDE (its discretization is NCSN/SMLD). Song et al. 2021, Eq. 9."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_range
from .._shapes import batch_time
from .gaussian_path import GaussianPathSDE


class VESDE(GaussianPathSDE):
    """``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw`` with ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``.

    Exact kernel (Song et al. 2021, Eq. 31): ``m(t) = 1``, ``s(t)^2 = sigma(t)^2 - sigma_min^2``, so
    ``p_0`` is the data distribution itself (the reference code's ``s = sigma(t)`` models data
    blurred by ``N(0, sigma_min^2)``); ``d s^2/dt = 2 log(sigma_max/sigma_min) sigma(t)^2`` gives the
    diffusion above (:class:`~sde_diffusion.sdes.gaussian_path.GaussianPathSDE`). Prior ``N(0, sigma_max^2 I)``.
    Defaults sigma_min = 0.01, sigma_max = 50 (use 348, 378 or 1348 for larger images).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        sigma_min, sigma_max = float(sigma_min), float(sigma_max)
        check_range("sigma_min", sigma_min, low=0.0, low_open=True, hint="the default is 0.01")
        check_range("sigma_max", sigma_max, low=0.0, low_open=True, hint="the default is 50")
        if sigma_min >= sigma_max:
            raise ValueError(
                f"sigma_min ({sigma_min}) must be smaller than sigma_max ({sigma_max}); the defaults are sigma_min=0.01, sigma_max=50"
            )
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._log_ratio = math.log(sigma_max / sigma_min)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t: Tensor) -> Tensor:
        """``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, elementwise."""
        return self.sigma_min * torch.exp(torch.as_tensor(t) * self._log_ratio)

    def mean_coeff(self, t: Tensor) -> Tensor:
        return torch.ones_like(torch.as_tensor(t))

    def std(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.sqrt(torch.expm1(2.0 * torch.as_tensor(t) * self._log_ratio))

    def log_mean_coeff_rate(self, t: Tensor) -> Tensor:
        return torch.zeros_like(torch.as_tensor(t))

    def variance_rate(self, t: Tensor) -> Tensor:
        return 2.0 * self._log_ratio * self.sigma(t) ** 2

    def time_from_log_snr(self, log_snr: Tensor, eps: float = 0.0, *, iterations: int = 60) -> Tensor:
        """Closed form: ``s^2 = e^-lambda = sigma_min^2 (e^(2 t L) - 1)`` with ``L = log(sigma_max / sigma_min)``,
        so ``t = log1p(e^-lambda / sigma_min^2) / (2 L)``. Float64, clamped to ``[eps, T]``."""
        ratio = torch.exp(-torch.as_tensor(log_snr, dtype=torch.float64)) / self.sigma_min**2
        return (torch.log1p(ratio) / (2.0 * self._log_ratio)).clamp(min=eps, max=self.T)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:  # zero: skip the product with the zero rate
        return torch.zeros_like(x)

    def discretize(self, x: Tensor, t: float | Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor]:
        """NCSN chain ``x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z`` (Song et al. 2021, Eq. 47),
        with ``sigma_i`` the kernel std at ``t - dt`` (zero at ``t = 0``)."""
        t, dt = batch_time(t, x), batch_time(dt, x)
        _, s_now = self.kernel(t)
        _, s_prev = self.kernel((t - dt).clamp(min=0.0))
        return torch.zeros_like(x), torch.sqrt(s_now**2 - s_prev**2)

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"
