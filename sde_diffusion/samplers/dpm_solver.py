"""DPM-Solver++ (Lu et al. 2022b): the data-prediction exponential integrator of the
probability-flow ODE, first order and second-order multistep (2M), for any Gaussian-kernel SDE."""

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
def dpm_solver_pp(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    order: int = 2,
) -> SamplerOutput:
    """DPM-Solver++(1) or DPM-Solver++(2M) (Lu et al. 2022b, Eq. 9 and Alg. 2) in ``lambda = logSNR / 2``.

    With ``lambda = log(m / s)``, ``h_i = lambda_{i+1} - lambda_i > 0`` and the data prediction
    ``x0_hat_i = (x_i + s_i^2 score(x_i, t_i)) / m_i``, one step is
    ``x_{i+1} = (s_{i+1} / s_i) x_i - m_{i+1} (exp(-h_i) - 1) D_i`` with
    ``D_i = x0_hat_i`` (order 1, identical to DDIM with eta = 0) or, for order 2 after the first
    step, ``D_i = (1 + 1/(2 r_i)) x0_hat_i - 1/(2 r_i) x0_hat_{i-1}``, ``r_i = h_{i-1} / h_i``.
    ``dpm_solver_pp.order`` is the order of the default ``order=2``. Meant for
    :func:`sde_diffusion.timesteps.log_snr_time_grid`; ``generator`` is unused (deterministic).

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)`` ending at ``eps > 0``.
        order: 1 or 2.
    Returns: samples at ``ts[-1]``, NFE = N.
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 (DPM-Solver++(1) = DDIM) or 2 (DPM-Solver++(2M)), got {order}")
    m, s, log_snr = kernel_table(sde, check_grid(ts), x, "dpm_solver_pp")
    h = 0.5 * (log_snr[1:] - log_snr[:-1])
    score = CountingScore(score_fn)
    x0_prev = None
    for i in tqdm(range(len(ts) - 1), disable=not progress, desc="dpm-solver++", leave=False):
        x0 = (x + s[i] ** 2 * score(x, batch_time(ts[i], x))) / m[i]
        d = x0
        if order == 2 and x0_prev is not None:
            half_inv_r = 0.5 * h[i] / h[i - 1]
            d = (1.0 + half_inv_r) * x0 - half_inv_r * x0_prev
        x = (s[i + 1] / s[i]) * x - m[i + 1] * torch.expm1(-h[i]) * d
        x0_prev = x0
    return SamplerOutput(x, score.nfe)
