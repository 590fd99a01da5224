"""Processes derived from a forward SDE and a score: the reverse-time SDE and the probability-flow ODE.

Both are small wrappers built from ``(sde, score_fn)``; they are written in forward time ``t`` and
are integrated from ``t = T`` down to ``t = eps`` (negative steps).
"""

from __future__ import annotations

from torch import Tensor

from .._shapes import batch_time, expand_like
from .base import SDE, ScoreFn


class ReverseSDE:
    """Reverse-time SDE ``dx = [f(x, t) - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar``.

    Anderson 1982; Song et al. 2021, Eq. 6. ``dt`` is negative when integrating from ``T`` to ``0``.
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn):
        self.sde = sde
        self.score_fn = score_fn

    def drift(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Reverse drift ``f - g^2 s``, shape ``(B, *dims)``."""
        t = batch_time(t, x)
        g = expand_like(self.sde.diffusion(t), x)
        return self.sde.drift(x, t) - g**2 * self.score_fn(x, t)

    def diffusion(self, t: Tensor) -> Tensor:
        """``g(t)``, shape ``(B,)``."""
        return self.sde.diffusion(t)

    def discretize(self, x: Tensor, t: float | Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor]:
        """Reverse step from ``t`` to ``t - dt`` (``dt > 0``) of the SDE's own discretization.

        With forward step ``x_{t+dt} = x + F + G z``, the reverse-diffusion predictor is
        ``x_{t-dt} = x - F + G^2 s(x, t) + G z`` (Song et al. 2021, App. E, Eq. 46); returns the
        reverse ``(F_rev, G)`` so that ``x_{t-dt} = x + F_rev + G z``.
        """
        t = batch_time(t, x)
        f, g = self.sde.discretize(x, t, dt)
        return -f + expand_like(g, x) ** 2 * self.score_fn(x, t), g


class ProbabilityFlowODE:
    """Probability-flow ODE ``dx/dt = f(x, t) - 1/2 g(t)^2 grad log p_t(x)``.

    Song et al. 2021, Eq. 13: its solutions share the marginals ``p_t`` of the forward SDE.
    Callable as ``ode(t, x)`` with a scalar ``t``, the signature torchdiffeq's ``odeint`` expects.
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn):
        self.sde = sde
        self.score_fn = score_fn

    def drift(self, x: Tensor, t: float | Tensor) -> Tensor:
        """ODE velocity, shape ``(B, *dims)``."""
        t = batch_time(t, x)
        g = expand_like(self.sde.diffusion(t), x)
        return self.sde.drift(x, t) - 0.5 * g**2 * self.score_fn(x, t)

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        return self.drift(x, t)
