"""EDM's samplers (Karras et al. 2022, Alg. 1 and 2), written for any SDE with a Gaussian kernel
``x_t = m(t) x_0 + s(t) eps``.

In ``sigma = s/m`` and ``y = x/m`` the probability-flow ODE of every Gaussian-kernel SDE is EDM's
``dy/dsigma = (y - D(y; sigma)) / sigma = eps_hat`` (Karras et al. 2022, Eq. 4), with the data
prediction ``D`` and the noise prediction ``eps_hat`` of the kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._checks import check_range
from ..sdes.base import SDE
from ..types import ScoreFn
from .base import SamplerOutput
from .driver import Solve, Step, runs, sample_on_grid


class EDMStep(Step):
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2); with ``S_churn = 0``, Alg. 1 (Heun).

    Step ``i`` at ``sigma_i``: ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` when
    ``S_tmin <= sigma_i <= S_tmax`` (else 0); raise the noise to ``sigma_hat = sigma_i (1 + gamma_i)``
    by ``y_hat = y_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z``; Euler
    ``y' = y_hat + (sigma_{i+1} - sigma_hat) d`` with ``d = eps_hat(y_hat; sigma_hat)``; then the
    trapezoid ``y_{i+1} = y_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2`` with
    ``d' = eps_hat(y'; sigma_{i+1})``. The last step stays Euler (EDM's last step goes to
    ``sigma = 0``). ``sigma_hat`` is capped at the prior's ``sigma(T)``, the largest noise level the
    SDE defines. Deterministic Heun is second order; with churn the order is that of the noise, 1.
    ``S_tmin``, ``S_tmax`` are noise levels ``sigma = s/m`` in data units.
    """

    name = "edm"

    def __init__(self, S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0):
        for key, value in (("S_churn", S_churn), ("S_tmin", S_tmin), ("S_noise", S_noise)):
            check_range(key, value, low=0, hint="EDM's ImageNet values: S_churn=40, S_tmin=0.05, S_tmax=50, S_noise=1.003")
        if not S_tmax >= S_tmin:
            raise ValueError(f"S_tmax must be >= S_tmin, got S_tmin={S_tmin}, S_tmax={S_tmax}")
        self.S_churn, self.S_tmin, self.S_tmax, self.S_noise = float(S_churn), float(S_tmin), float(S_tmax), float(S_noise)
        self.order = 2 if self.S_churn == 0 else 1

    def start(self, solve: Solve) -> None:
        m, s, _ = solve.tables()
        sigma = s / m
        gamma = torch.where((sigma[:-1] >= self.S_tmin) & (sigma[:-1] <= self.S_tmax), min(self.S_churn / solve.n, math.sqrt(2) - 1), 0.0)
        self.churned = gamma > 0
        self.t_hat, self.m_hat, self.s_hat = solve.ts[:-1], m[:-1], s[:-1]
        if self.churned.any():  # the times of the raised noise levels (none for Heun: no bisection)
            sigma_hat = sigma[:-1] * (1 + gamma)
            t_hat = solve.sde.time_from_log_snr(-2.0 * sigma_hat.to(torch.float64).log(), float(solve.ts[-1]))
            m_hat, s_hat = solve.sde.kernel(t_hat)
            self.t_hat = torch.where(self.churned, t_hat.to(solve.ts), self.t_hat)
            self.m_hat = torch.where(self.churned, m_hat.to(m), self.m_hat)
            self.s_hat = torch.where(self.churned, s_hat.to(s), self.s_hat)
        self.sigma = sigma

    def step(self, solve, i, x, order_cap):
        m, s, _ = solve.tables()
        sigma = self.sigma
        y = x / m[i]
        sigma_hat = sigma[i]
        if self.churned[i]:
            sigma_hat = self.s_hat[i] / self.m_hat[i]
            y = y + (sigma_hat**2 - sigma[i] ** 2).clamp(min=0).sqrt() * self.S_noise * solve.randn_like(y)
        pred = solve.predict(self.m_hat[i] * y, self.t_hat[i], (self.m_hat[i], self.s_hat[i]))
        assert pred.eps is not None
        y_next = y + (sigma[i + 1] - sigma_hat) * pred.eps
        if i < solve.n - 1:
            d_next = solve.predict_at(m[i + 1] * y_next, i + 1).eps
            assert d_next is not None
            y_next = y + (sigma[i + 1] - sigma_hat) * 0.5 * (pred.eps + d_next)
        return m[i + 1] * y_next, pred.x0


@runs(EDMStep())
def heun(sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, **driver: Any) -> SamplerOutput:
    """EDM's deterministic Heun sampler (Karras et al. 2022, Alg. 1): :class:`EDMStep` without churn.

    Second order (``heun.order``); meant for :func:`sde_diffusion.timesteps.edm_time_grid`.

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)`` ending at ``eps > 0``.
        driver: ``generator`` (unused: deterministic), ``progress``, ``callback``, ``x0_correction``,
            ``denoise_to_zero`` of :func:`~sde_diffusion.samplers.driver.sample_on_grid`.
    Returns: samples at ``ts[-1]``, NFE = 2N - 1 (+ 1 with ``denoise_to_zero``).
    """
    return sample_on_grid(EDMStep(), sde, score_fn, x, ts, **driver)


@runs(EDMStep(S_churn=1.0))  # its order with churn, the reason to use it (without: heun)
def edm_sde(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
    **driver: Any,
) -> SamplerOutput:
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2), see :class:`EDMStep`.

    ``S_churn`` sets the total noise injected (``gamma_i = min(S_churn / N, sqrt(2) - 1)``),
    ``[S_tmin, S_tmax]`` the noise levels ``sigma`` where it is, ``S_noise`` inflates it slightly
    to offset the denoiser's loss of detail. ``S_churn = 0`` is :func:`heun`. First order with churn
    (``edm_sde.order``); meant for :func:`sde_diffusion.timesteps.edm_time_grid`.

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)`` ending at ``eps > 0``.
        driver: ``generator``, ``progress``, ``callback``, ``x0_correction``, ``denoise_to_zero`` of
            :func:`~sde_diffusion.samplers.driver.sample_on_grid`.
    Returns: samples at ``ts[-1]``, NFE = 2N - 1 (+ 1 with ``denoise_to_zero``).
    """
    return sample_on_grid(EDMStep(S_churn, S_tmin, S_tmax, S_noise), sde, score_fn, x, ts, **driver)
