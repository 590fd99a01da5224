"""DDIM (Song, Meng, Ermon 2021) for any SDE with a Gaussian kernel, and the kernel table that the
kernel-based fast samplers (DDIM, Heun, DPM-Solver++) share.

These samplers see the SDE only through its perturbation kernel ``x_t = m(t) x_0 + s(t) eps`` and
its log-SNR ``log(m^2 / s^2)``, so VP, sub-VP, VE and any user SDE with a ``kernel`` work alike.
With the score ``S = score(x_t, t)`` the two predictions are (docs/references.md, parameterizations)
``eps_hat = -s(t) S`` and ``x0_hat = (x_t + s(t)^2 S) / m(t)``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._shapes import batch_time
from ..scores import CountingScore, ScoreFn
from ..sdes.base import SDE
from ..sdes.tables import kernel_table
from ..timesteps import check_grid
from .base import SamplerOutput, with_order


@with_order(1)
@torch.no_grad()
def ddim(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    eta: float = 0.0,
) -> SamplerOutput:
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
    Returns: samples at ``ts[-1]``, NFE = N.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM), got {eta}")
    m, s, log_snr = kernel_table(sde, check_grid(ts), x, "ddim")
    sigma2 = -(eta**2) * s[1:] ** 2 * torch.expm1(log_snr[:-1] - log_snr[1:])
    direction = (s[1:] ** 2 - sigma2).sqrt()
    score = CountingScore(score_fn)
    for i in tqdm(range(len(ts) - 1), disable=not progress, desc="ddim", leave=False):
        eps_hat = -s[i] * score(x, batch_time(ts[i], x))
        x0_hat = (x - s[i] * eps_hat) / m[i]
        x = m[i + 1] * x0_hat + direction[i] * eps_hat
        if eta > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + sigma2[i].sqrt() * z
    return SamplerOutput(x, score.nfe)
