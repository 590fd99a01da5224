"""Noise-rate schedules ``beta(t)`` for the variance-preserving family, with their integrals.

A schedule gives ``beta(t)`` and ``B(t) = int_0^t beta(s) ds`` elementwise on tensors of any shape.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_range


class LinearBeta:
    """``beta(t) = beta_min + t (beta_max - beta_min)``; ``B(t) = beta_min t + t^2 (beta_max - beta_min) / 2``.

    Song et al. 2021, App. B. The defaults (0.1, 20) make the VP SDE's discretization with N = 1000
    the linear DDPM chain with betas from 1e-4 to 0.02 (Ho et al. 2020).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        beta_min, beta_max = float(beta_min), float(beta_max)
        check_range("beta_min", beta_min, low=0.0, hint="the default is 0.1")
        check_range("beta_max", beta_max, low=0.0, low_open=True, hint="the default is 20")
        if beta_min >= beta_max:
            raise ValueError(
                f"beta_min ({beta_min}) must be smaller than beta_max ({beta_max}); the defaults are beta_min=0.1, beta_max=20"
            )
        self.beta_min = beta_min
        self.beta_max = beta_max

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def inverse_integral(self, big_b: Tensor) -> Tensor:
        """The ``t`` with ``B(t) = big_b`` (``>= 0``): the quadratic's positive root, written
        ``2 B / (beta_min + sqrt(beta_min^2 + 2 B (beta_max - beta_min)))`` to stay exact at ``B -> 0``."""
        return 2.0 * big_b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * big_b * (self.beta_max - self.beta_min)))

    def __repr__(self) -> str:
        return f"LinearBeta(beta_min={self.beta_min}, beta_max={self.beta_max})"


class CosineBeta:
    """Cosine schedule of Nichol & Dhariwal 2021 in continuous time.

    ``alpha_bar(t) = c(t) / c(0)`` with ``c(t) = cos^2(pi/2 (t + s) / (1 + s))``, so
    ``beta(t) = -d/dt log alpha_bar(t) = pi / (1 + s) tan(pi/2 (t + s) / (1 + s))``, which diverges at
    ``t = 1``. As in the paper, beta is clipped: ``beta(t) <= max_beta``; the default 999 is the
    paper's per-step clip 0.999 at N = 1000 steps. Past the clip time ``t_c`` the integral grows
    linearly, so drift, diffusion and kernel stay consistent.
    """

    def __init__(self, s: float = 0.008, max_beta: float = 999.0):
        s = check_range("cosine offset s", s, low=0.0, low_open=True, hint="the default is 0.008")
        max_beta = check_range("max_beta", max_beta, low=0.0, low_open=True, hint="the default is 999")
        self.s = s
        self.max_beta = max_beta
        # beta(t_c) = max_beta  <=>  tan(theta_c) = max_beta (1 + s) / pi
        theta_c = math.atan(max_beta * (1.0 + s) / math.pi)
        self._t_clip = theta_c * 2.0 / math.pi * (1.0 + s) - s
        self._log_c0 = 2.0 * math.log(math.cos(math.pi / 2.0 * s / (1.0 + s)))

    def _theta(self, t: Tensor) -> Tensor:
        return math.pi / 2.0 * (t + self.s) / (1.0 + self.s)

    def beta(self, t: Tensor) -> Tensor:
        tc = t.clamp(max=self._t_clip)
        return torch.where(
            t < self._t_clip,
            math.pi / (1.0 + self.s) * torch.tan(self._theta(tc)),
            torch.full_like(t, self.max_beta),
        )

    def integral(self, t: Tensor) -> Tensor:
        tc = t.clamp(max=self._t_clip)
        smooth = self._log_c0 - 2.0 * torch.log(torch.cos(self._theta(tc)))
        # clamp: at t = 0 the difference of logs rounds to -1e-20, which would make s(0) = sqrt(<0)
        return smooth.clamp(min=0.0) + self.max_beta * (t - tc)

    def __repr__(self) -> str:
        return f"CosineBeta(s={self.s}, max_beta={self.max_beta})"
