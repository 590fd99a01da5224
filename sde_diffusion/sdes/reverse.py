"""Processes derived from a forward SDE and a score: the reverse-time SDE and the probability-flow ODE.

Both are small wrappers built from ``(sde, score_fn)``; they are written in forward time ``t`` and
are integrated from ``t = T`` down to ``t = eps`` (negative steps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .._shapes import batch_time, expand_like
from ..types import ScoreFn

if TYPE_CHECKING:  # annotations only: base.py builds these processes (SDE.reverse, SDE.probability_flow)
    from .base import SDE


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
        f, g2 = self.sde.drift_and_diffusion_squared(x, t)
        return f - expand_like(g2, x) * self.score_fn(x, t)

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
        return self.drift_and_diffusion_squared(x, t)[0]

    def drift_and_diffusion_squared(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """The velocity ``f - g^2 score / 2`` (shape ``(B, *dims)``) and the ``g(t)^2`` it used
        (shape ``(B,)``), from one :meth:`~sde_diffusion.sdes.base.SDE.drift_and_diffusion_squared`
        call: a kernel SDE derives its rates once per evaluation."""
        t = batch_time(t, x)
        f, g2 = self.sde.drift_and_diffusion_squared(x, t)
        return f - 0.5 * expand_like(g2, x) * self.score_fn(x, t), g2

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        return self.drift(x, t)


class TimeChangedFlow:
    """The probability-flow ODE of a kernel SDE against another independent variable ``u``:

    - ``variable="log_snr"``: ``u = -lambda(t)``, minus the log-SNR, in the state ``x`` itself:
      ``dx/du = (dt/du) f~(x, t)`` with ``dt/du = s(t)^2 / g(t)^2``, since
      ``d lambda/dt = -g^2 / s^2`` for every kernel SDE (from the moment equations
      ``d log m/dt = f``, ``d s^2/dt = 2 f s^2 + g^2``); the time of Zheng et al. 2023,
      "Improved Techniques for Maximum Likelihood Estimation for Diffusion ODEs".
    - ``variable="sigma"``: ``u = sigma(t) = s(t) / m(t)`` in the scaled state ``y = x / m(t)``,
      ``dy/dsigma = -sigma m(t) score(m y, t)`` (Karras et al. 2022, Eq. 4 with their ``s = m``):
      every kernel SDE becomes the same variance-exploding ODE in ``(y, sigma)``.

    ``u`` increases with ``t`` in both; ``t(u)`` comes from
    :meth:`~sde_diffusion.sdes.base.SDE.time_from_log_snr`. Callable as ``flow(u, state)`` with a
    0-d ``u``, the signature of torchdiffeq's ``odeint``. The state is ``x / scale(t)``; densities
    move between ``x`` and the state by ``log p_t(x) = log p_state - D log scale(t)``.
    """

    VARIABLES = ("log_snr", "sigma")

    def __init__(self, sde: SDE, score_fn: ScoreFn, variable: str = "log_snr"):
        if variable not in self.VARIABLES:
            raise ValueError(f"variable must be one of {self.VARIABLES}, got {variable!r}")
        if not sde.has_kernel:
            raise ValueError(
                f"time_variable={variable} needs an SDE with a closed-form kernel; {type(sde).__name__} has none: use time_variable=t"
            )
        self.sde = sde
        self.score_fn = score_fn
        self.variable = variable
        self._flow_in_t = sde.probability_flow(score_fn)

    def u(self, t: float | Tensor) -> Tensor:
        """The new variable at time ``t``, in float64."""
        log_snr = self.sde.log_snr(torch.as_tensor(t, dtype=torch.float64))
        return -log_snr if self.variable == "log_snr" else torch.exp(-0.5 * log_snr)

    def time(self, u: Tensor) -> Tensor:
        """``t(u)`` in float64, the inverse of :meth:`u`."""
        u = torch.as_tensor(u, dtype=torch.float64)
        return self.sde.time_from_log_snr(-u if self.variable == "log_snr" else -2.0 * torch.log(u))

    def scale(self, t: Tensor) -> Tensor:
        """The factor between ``x`` and the state: 1 (log-SNR) or ``m(t)`` (sigma)."""
        t = torch.as_tensor(t)
        return torch.ones_like(t) if self.variable == "log_snr" else self.sde.kernel(t)[0]

    def __call__(self, u: Tensor, state: Tensor) -> Tensor:
        t = self.time(u).to(state.dtype)
        tb = batch_time(t, state)
        m, s = self.sde.kernel(t)
        if self.variable == "sigma":
            return (-u.to(state.dtype) * m) * self.score_fn(m * state, tb)
        velocity, g2 = self._flow_in_t.drift_and_diffusion_squared(state, tb)
        return expand_like(s * s / g2, state) * velocity
