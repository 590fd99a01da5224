"""DDPM's ancestral sampler (Ho et al. 2020, Alg. 2) with fixed or learned variances (Nichol &
Dhariwal 2021), for any SDE with a Gaussian kernel, on the full chain or a strided subset of it.

Between grid times ``t > u`` the forward chain is ``x_t = a x_u + sqrt(v) z`` with ``a = m_t / m_u``
and ``v = s_t^2 - a^2 s_u^2 = -s_t^2 expm1(2 (lambda_t - lambda_u))`` (``lambda = log(m / s)``): on a
discrete-time SDE's step grid (:func:`~sde_diffusion.timesteps.discrete_time_grid`) ``v`` is the
respaced chain's ``beta'`` (Nichol & Dhariwal 2021, Sec. 4). The step draws from
``N(mu, sigma^2)``, ``mu`` the posterior mean of ``q(x_u | x_t, x0_hat)`` (Ho et al. 2020, Eq. 7),

    mu = a s_u^2 / s_t^2 x + m_u v / s_t^2 x0_hat,

with ``sigma^2 = v`` (``"large"``, DDPM's ``beta``), the posterior variance ``v s_u^2 / s_t^2``
(``"small"``, ``beta_tilde``), or ``exp(r log v + (1 - r) log beta_tilde)`` with the network's
interpolation ``r`` (``"learned"``). The chain's last step (to step 0) has ``beta_tilde = 0`` and mean
``x0_hat``: the driver's ``denoise_to_zero``, on by default, so ``K`` grid times cost ``K`` calls.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..losses.vlb import VARIANCES
from ..sdes.base import SDE
from ..types import ScoreFn
from .base import SamplerOutput
from .driver import Solve, Step, runs, sample_on_grid


class DDPMStep(Step):
    """One ancestral step with variance ``"large"``, ``"small"`` or ``"learned"``; see :func:`ddpm`."""

    order = 1
    name = "ddpm"
    denoise_to_zero = True  # the chain's last step (to step 0) is its mean x0_hat

    def __init__(self, variance: str = "large"):
        if variance not in VARIANCES:
            raise ValueError(
                f"variance must be one of {VARIANCES} (large: beta, small: beta_tilde, learned: the network's), got {variance!r}"
            )
        self.variance = variance

    def start(self, solve: Solve) -> None:
        m, s, _ = solve.tables()
        lam = solve.lam64
        assert lam is not None
        v = (-(s[:-1].double() ** 2) * torch.expm1(2.0 * (lam[:-1] - lam[1:]))).to(s)
        ratio = s[1:] ** 2 / s[:-1] ** 2
        self.coef_x = m[:-1] / m[1:] * ratio
        self.coef_x0 = m[1:] * v / s[:-1] ** 2
        self.log_large, self.log_small = v.log(), (v * ratio).log()

    def step(self, solve, i, x, order_cap):
        pred = solve.predict_at(x, i, variance=self.variance == "learned")
        assert pred.x0 is not None
        mean = self.coef_x[i] * x + self.coef_x0[i] * pred.x0
        if self.variance == "learned":
            assert pred.variance is not None
            log_var = pred.variance * self.log_large[i] + (1 - pred.variance) * self.log_small[i]
        else:
            log_var = self.log_large[i] if self.variance == "large" else self.log_small[i]
        return mean + torch.exp(0.5 * log_var) * solve.randn_like(x), pred.x0


@runs(DDPMStep())
def ddpm(sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, *, variance: str = "large", **driver: Any) -> SamplerOutput:
    """DDPM ancestral sampling (module docstring) over the grid ``ts``.

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(K,)``, usually :func:`~sde_diffusion.timesteps.discrete_time_grid`
            (steps of the chain, strided to ``K``); any grid ending above 0 works.
        variance: ``"large"`` (``sigma^2 = beta``), ``"small"`` (``beta_tilde``) or ``"learned"``
            (a :class:`~sde_diffusion.models.LearnedVarianceParameterization` model).
        driver: ``generator``, ``progress``, ``callback``, ``x0_correction``, ``denoise_to_zero`` of
            :func:`~sde_diffusion.samplers.driver.sample_on_grid`; ``denoise_to_zero`` is on unless
            False is passed: the chain finishes with ``x0_hat`` at ``ts[-1]`` (its noiseless last
            step), so NFE = K.
    Returns: samples at ``t = 0`` (at ``ts[-1]`` without ``denoise_to_zero``) and the NFE.
    """
    return sample_on_grid(DDPMStep(variance), sde, score_fn, x, ts, **driver)
