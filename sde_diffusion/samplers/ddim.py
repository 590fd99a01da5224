"""DDIM (Song, Meng, Ermon 2021) for any SDE with a Gaussian kernel.

The step sees the SDE only through its perturbation kernel ``x_t = m(t) x_0 + s(t) eps`` and its
log-SNR, so VP, sub-VP, VE and any user SDE with a ``kernel`` work alike. With the score
``S = score(x_t, t)`` the two predictions are (docs/references.md, parameterizations)
``eps_hat = -s(t) S`` and ``x0_hat = (x_t + s(t)^2 S) / m(t)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._checks import check_range
from ..sdes.base import SDE
from ..types import ScoreFn
from .base import SamplerOutput
from .driver import Solve, Step, runs, sample_on_grid


class DDIMStep(Step):
    """DDIM with stochasticity ``eta`` (Song, Meng, Ermon 2021, Eq. 12 and 16); see :func:`ddim`."""

    order = 1
    name = "ddim"

    def __init__(self, eta: float = 0.0):
        self.eta = check_range("eta", eta, low=0.0, high=1.0, hint="0: deterministic DDIM, 1: DDPM")

    def start(self, solve: Solve) -> None:
        _, s, lam = solve.tables()
        self.sigma2 = -(self.eta**2) * s[1:] ** 2 * torch.expm1(2.0 * (lam[:-1] - lam[1:]))
        self.direction = (s[1:] ** 2 - self.sigma2).sqrt()

    def step(self, solve, i, x, order_cap):
        m, _, _ = solve.tables()
        pred = solve.predict_at(x, i)
        assert pred.x0 is not None and pred.eps is not None
        x = m[i + 1] * pred.x0 + self.direction[i] * pred.eps
        if self.eta > 0:
            x = x + self.sigma2[i].sqrt() * solve.randn_like(x)
        return x, pred.x0


@runs(DDIMStep())
def ddim(sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, *, eta: float = 0.0, **driver: Any) -> SamplerOutput:
    """DDIM with stochasticity ``eta`` (Song, Meng, Ermon 2021, Eq. 12 and 16), for any Gaussian kernel.

    Step from ``t = ts[i]`` to ``u = ts[i + 1]``:
    ``x_u = m_u x0_hat + sqrt(s_u^2 - sigma^2) eps_hat + sigma z`` with
    ``sigma^2 = eta^2 s_u^2 (1 - SNR_t / SNR_u)``, the DDPM posterior variance
    ``(1 - abar_u) / (1 - abar_t) (1 - abar_t / abar_u)`` written with ``SNR = m^2 / s^2`` so it
    holds for every kernel (VE: ``s_u^2 (s_t^2 - s_u^2) / s_t^2``, the NCSN ancestral variance).
    ``eta = 0`` is deterministic: Euler on the probability-flow ODE in ``sigma = s/m``, ``x/m``
    (first order, ``ddim.order``); ``eta = 1`` is ancestral DDPM sampling. Every step, the last
    included, draws its noise, so the output is a sample of ``p_{ts[-1]}``.

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)`` ending at ``eps > 0``.
        eta: in ``[0, 1]``.
        driver: ``generator``, ``progress``, ``callback``, ``x0_correction``, ``denoise_to_zero`` of
            :func:`~sde_diffusion.samplers.driver.sample_on_grid`.
    Returns: samples at ``ts[-1]``, NFE = N (+ 1 with ``denoise_to_zero``).
    """
    return sample_on_grid(DDIMStep(eta), sde, score_fn, x, ts, **driver)
