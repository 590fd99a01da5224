"""Variance-preserving SDEs: VP (its discretization is DDPM) and sub-VP.

Song et al. 2021, Eq. 11 (VP) and Eq. 12 (sub-VP), with ``beta(t)`` from a schedule object.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._shapes import batch_time, expand_like
from .gaussian_path import GaussianPathSDE
from .schedules import CosineBeta, LinearBeta


class VariancePreservingSDE(GaussianPathSDE):
    """``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw`` for any schedule with ``beta`` and ``integral``.

    The path: ``m(t) = exp(-B(t)/2)``, ``s(t) = sqrt(1 - exp(-B(t)))`` with ``B(t) = int_0^t beta``
    (Song et al. 2021, Eq. 29), with the rates ``d log m/dt = -beta/2`` and
    ``d s^2/dt = beta exp(-B)`` in closed form; drift and diffusion follow from them
    (:class:`~sde_diffusion.sdes.gaussian_path.GaussianPathSDE`). Prior ``N(0, I)``.
    Discretization: the DDPM chain ``x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z`` with
    ``beta_i = beta(t_i) dt`` (Song et al. 2021, Eq. 45; Ho et al. 2020), clipped at
    ``max_step_beta = 0.999`` as DDPM clips its betas: coarse grids (beta(t) dt > 1 with fewer
    than about 20 steps) would otherwise take the square root of a negative number.
    """

    max_step_beta = 0.999
    prior_std = 1.0

    def __init__(self, schedule):
        self.schedule = schedule

    def mean_coeff(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.schedule.integral(torch.as_tensor(t)))

    def std(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.schedule.integral(torch.as_tensor(t))))

    def log_mean_coeff_rate(self, t: Tensor) -> Tensor:
        return -0.5 * self.schedule.beta(torch.as_tensor(t))

    def variance_rate(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        return self.schedule.beta(t) * torch.exp(-self.schedule.integral(t))

    def time_from_log_snr(self, log_snr: Tensor, eps: float = 0.0, *, iterations: int = 60) -> Tensor:
        """Closed form when the schedule can invert ``B``: ``e^lambda = 1 / (e^B - 1)`` gives
        ``B = log(1 + e^-lambda)``, then ``t = B^-1``; otherwise the base class's bisection. Float64,
        clamped to ``[eps, T]``."""
        if not hasattr(self.schedule, "inverse_integral"):
            return super().time_from_log_snr(log_snr, eps, iterations=iterations)
        big_b = torch.nn.functional.softplus(-torch.as_tensor(log_snr, dtype=torch.float64))
        return self.schedule.inverse_integral(big_b).clamp(min=eps, max=self.T)

    def discretize(self, x: Tensor, t: float | Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor]:
        t, dt = batch_time(t, x), batch_time(dt, x)
        beta_i = (self.schedule.beta(t) * dt).clamp(max=self.max_step_beta)
        return expand_like(torch.sqrt(1.0 - beta_i) - 1.0, x) * x, beta_i.sqrt()


class VPSDE(VariancePreservingSDE):
    """VP SDE with the linear schedule ``beta(t) = beta_min + t (beta_max - beta_min)``.

    Defaults beta_min = 0.1, beta_max = 20 (Song et al. 2021; DDPM's 1e-4..0.02 at N = 1000).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        super().__init__(LinearBeta(beta_min, beta_max))

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.schedule.beta_min}, beta_max={self.schedule.beta_max})"


class CosineVPSDE(VariancePreservingSDE):
    """VP SDE with the cosine schedule of Nichol & Dhariwal 2021 (see :class:`CosineBeta`)."""

    def __init__(self, s: float = 0.008, max_beta: float = 999.0):
        super().__init__(CosineBeta(s, max_beta))

    def __repr__(self) -> str:
        return f"CosineVPSDE(s={self.schedule.s}, max_beta={self.schedule.max_beta})"


class SubVPSDE(GaussianPathSDE):
    """sub-VP SDE ``dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw`` (Song et al. 2021, Eq. 12).

    The path: ``m(t) = exp(-B(t)/2)``, ``s(t) = 1 - exp(-B(t))`` (Eq. 30), with ``d log m/dt = -beta/2``
    and ``d s^2/dt = 2 beta exp(-B) (1 - exp(-B))``; linear ``beta`` with the VP defaults. Its variance
    is bounded by the VP SDE's at every time. Prior ``N(0, I)``. Discretized by Euler-Maruyama.
    """

    prior_std = 1.0

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.schedule = LinearBeta(beta_min, beta_max)

    def mean_coeff(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.schedule.integral(torch.as_tensor(t)))

    def std(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.schedule.integral(torch.as_tensor(t)))

    def log_mean_coeff_rate(self, t: Tensor) -> Tensor:
        return -0.5 * self.schedule.beta(torch.as_tensor(t))

    def variance_rate(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        big_b = self.schedule.integral(t)
        return 2.0 * self.schedule.beta(t) * torch.exp(-big_b) * -torch.expm1(-big_b)

    def time_from_log_snr(self, log_snr: Tensor, eps: float = 0.0, *, iterations: int = 60) -> Tensor:
        """Closed form: with ``a = m^2 = e^-B`` and ``r = e^-lambda``, ``(1 - a)^2 = r a``, whose root in
        ``(0, 1)`` is ``a = 2 / (2 + r + sqrt(r^2 + 4 r))``; then ``B = -log a`` and ``t = B^-1``.
        Float64, clamped to ``[eps, T]``."""
        r = torch.exp(-torch.as_tensor(log_snr, dtype=torch.float64))
        big_b = torch.log(0.5 * (2.0 + r + torch.sqrt(r * r + 4.0 * r)))
        return self.schedule.inverse_integral(big_b).clamp(min=eps, max=self.T)

    def __repr__(self) -> str:
        return f"SubVPSDE(beta_min={self.schedule.beta_min}, beta_max={self.schedule.beta_max})"
