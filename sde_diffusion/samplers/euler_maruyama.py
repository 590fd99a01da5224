"""Euler-Maruyama on the reverse-time SDE (Song et al. 2021, Eq. 6; Kloeden & Platen 1992)."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..scores import CountingScore, ScoreFn
from ..sdes.base import SDE
from ..timesteps import check_grid
from .base import SamplerOutput, with_order
from .predictors import EulerMaruyamaPredictor


@with_order(1)
@torch.no_grad()
def euler_maruyama(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> SamplerOutput:
    """Integrate ``dx = [f - g^2 s] dt + g dw_bar`` from ``ts[0]`` down the grid ``ts``.

    Step from ``t`` to ``t + dt`` (``dt < 0``): ``x <- x + (f - g^2 s) dt + g sqrt(|dt|) z``
    (:class:`EulerMaruyamaPredictor`). The last step returns its mean (no noise is added after the
    final score evaluation), the usual choice that avoids leaving noise of scale ``g sqrt(|dt|)`` on
    the samples. Weak order 1 (``euler_maruyama.order``); works for any SDE, with or without a kernel.

    Args:
        x: prior samples ``(B, *dims)`` at time ``ts[0]``.
        ts: decreasing times ``(N + 1,)``, e.g. :func:`sde_diffusion.timesteps.uniform_time_grid`.
    Returns: samples at ``ts[-1]`` and NFE = N.
    """
    check_grid(ts)
    score = CountingScore(score_fn)
    predictor = EulerMaruyamaPredictor()
    n = len(ts) - 1
    for i in tqdm(range(n), disable=not progress, desc="euler-maruyama", leave=False):
        if i == n - 1:
            x, _ = predictor.transition(sde, score, x, ts[i], ts[i + 1])
        else:
            x, _ = predictor.step(sde, score, x, ts[i], ts[i + 1], generator)
    return SamplerOutput(x, score.nfe)
