"""EDM's deterministic second-order Heun sampler (Karras et al. 2022, Alg. 1 without churn),
written for any SDE with a Gaussian kernel ``x_t = m(t) x_0 + s(t) eps``."""

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


@with_order(2)
@torch.no_grad()
def heun(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> SamplerOutput:
    """Heun's method on the probability-flow ODE in EDM's variables (Karras et al. 2022, Alg. 1, Eq. 4).

    In ``sigma = s/m`` and ``y = x/m`` the probability-flow ODE of every Gaussian-kernel SDE is
    EDM's ``dy/dsigma = (y - D(y; sigma)) / sigma = eps_hat = -s(t) score(x, t)``. Step ``i``:
    ``d_i = eps_hat(x_i)``, Euler ``y' = y_i + (sigma_{i+1} - sigma_i) d_i``, then the trapezoid
    correction ``y_{i+1} = y_i + (sigma_{i+1} - sigma_i) (d_i + d') / 2`` with
    ``d' = eps_hat(m_{i+1} y')``; the last step stays Euler (EDM's last step goes to sigma = 0).
    Second order (``heun.order``); meant for :func:`sde_diffusion.timesteps.edm_time_grid`.
    ``generator`` is unused (the sampler is deterministic) and kept for the shared signature.

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)`` ending at ``eps > 0``.
    Returns: samples at ``ts[-1]``, NFE = 2N - 1.
    """
    m, s, _ = kernel_table(sde, check_grid(ts), x, "heun")
    sigma = s / m
    score = CountingScore(score_fn)
    n = len(ts) - 1
    y = x / m[0]
    for i in tqdm(range(n), disable=not progress, desc="heun", leave=False):
        d = -s[i] * score(m[i] * y, batch_time(ts[i], x))
        y_euler = y + (sigma[i + 1] - sigma[i]) * d
        if i == n - 1:
            y = y_euler
            break
        d_next = -s[i + 1] * score(m[i + 1] * y_euler, batch_time(ts[i + 1], x))
        y = y + (sigma[i + 1] - sigma[i]) * 0.5 * (d + d_next)
    return SamplerOutput(m[-1] * y, score.nfe)
