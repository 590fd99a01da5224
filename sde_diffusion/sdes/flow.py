"""Rectified flow / conditional optimal transport as a Gaussian path: ``x_t = (1 - t) x_0 + t z``."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_range
from .gaussian_path import GaussianPathSDE


class RectifiedFlow(GaussianPathSDE):
    """The linear path ``m(t) = 1 - t``, ``s(t) = t`` of rectified flow (Liu et al. 2023) and of
    flow matching's conditional optimal-transport path (Lipman et al. 2023, Eq. 20, with time
    reversed: here ``t = 0`` is data and ``t = 1`` noise, as for every SDE of this library).

    Derived SDE: ``d log m/dt = -1/(1 - t)`` and ``d s^2/dt = 2t`` give
    ``dx = -x/(1 - t) dt + sqrt(2t / (1 - t)) dw``, whose probability-flow velocity is the flow
    matching field ``E[z - x_0 | x_t]``. The path is singular at ``t = 1`` (``m = 0``: drift and
    diffusion diverge, while the velocity stays finite), so the SDE ends at ``T = t_max < 1``
    (default 0.999): samplers start there from the prior ``N(0, s(T)^2 I)``, which differs from the
    true ``p_T`` only by the data scaled by ``m(T) = 1 - t_max``, and the reverse SDE's ``g(T)^2 =
    2 T/(1 - T)`` (about 2,000 at the default) is finite. The log-SNR ``2 log((1 - t)/t)`` is
    inverted in closed form.
    """

    def __init__(self, t_max: float = 0.999):
        t_max = check_range(
            "t_max", t_max, low=0.5, high=1.0, low_open=True, high_open=True, hint="the path is singular at t = 1; the default is 0.999"
        )
        self.T = t_max

    def mean_coeff(self, t: Tensor) -> Tensor:
        return 1.0 - torch.as_tensor(t)

    def std(self, t: Tensor) -> Tensor:
        return torch.as_tensor(t) * 1.0

    def log_mean_coeff_rate(self, t: Tensor) -> Tensor:
        return -1.0 / (1.0 - torch.as_tensor(t))

    def variance_rate(self, t: Tensor) -> Tensor:
        return 2.0 * torch.as_tensor(t)

    def time_from_log_snr(self, log_snr: Tensor, eps: float = 0.0, *, iterations: int = 60) -> Tensor:
        """``t = 1 / (1 + exp(lambda / 2))``, clamped to ``[eps, T]`` (float64)."""
        t = torch.sigmoid(-0.5 * torch.as_tensor(log_snr, dtype=torch.float64))
        return t.clamp(min=eps, max=self.T)

    def __repr__(self) -> str:
        return f"RectifiedFlow(t_max={self.T})"
