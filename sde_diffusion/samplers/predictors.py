"""Predictors: one step of the reverse-time process from ``t`` down to ``t_next < t``.

Song et al. 2021, Sec. 4.2 and App. E-G. Every predictor here is a Gaussian transition
``x_{t_next} ~ N(mu(x), sigma^2 I)``: :meth:`Predictor.transition` returns its mean ``mu`` and std
``sigma`` and :meth:`Predictor.step` draws from it, so the exact law of a predictor chain is known
whenever ``mu`` is affine in ``x`` (the tests use this on Gaussian data). Predictors see the SDE
only through its methods (``reverse``, ``diffusion``, ``kernel``, ``log_snr``), so any user SDE works.

Shapes: ``x`` is ``(B, *dims)``; ``t`` and ``t_next`` are scalars, 0-d tensors or ``(B,)``;
``sigma`` is ``(B,)``. ``order`` is the weak order of the step as data.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from .._noise import NoiseSource, randn_like
from .._shapes import batch_time, expand_like
from ..sdes.base import SDE
from ..types import ScoreFn


class Predictor(abc.ABC):
    """A Gaussian reverse-time transition from ``t`` to ``t_next < t``."""

    order: int | None = 1
    """Weak order in the step size (None when the predictor does not move the state)."""

    requires_kernel: bool = False
    """Whether the SDE must implement ``kernel(t)``; the samplers check it before the first step."""

    @abc.abstractmethod
    def transition(self, sde: SDE, score_fn: ScoreFn, x: Tensor, t: float | Tensor, t_next: float | Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(B, *dims)`` and std ``(B,)`` of ``x_{t_next}`` given ``x_t = x``."""

    def step(
        self,
        sde: SDE,
        score_fn: ScoreFn,
        x: Tensor,
        t: float | Tensor,
        t_next: float | Tensor,
        generator: NoiseSource = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``x_{t_next} = mu + sigma z``, ``z ~ N(0, I)``; returns ``(x_{t_next}, mu)``."""
        mean, std = self.transition(sde, score_fn, x, t, t_next)
        z = randn_like(x, generator)
        return mean + expand_like(std, x) * z, mean

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EulerMaruyamaPredictor(Predictor):
    """Euler-Maruyama on the reverse SDE ``dx = [f - g^2 s] dt + g dw_bar`` (Song et al. 2021, Eq. 6).

    With ``dt = t_next - t < 0``: ``mu = x + (f(x, t) - g(t)^2 s(x, t)) dt``, ``sigma = g(t) sqrt(-dt)``.
    Weak order 1 (strong order 1 as well, since the noise ``g(t)`` does not depend on ``x``).
    """

    def transition(self, sde, score_fn, x, t, t_next):
        t, t_next = batch_time(t, x), batch_time(t_next, x)
        dt = t_next - t
        mean = x + sde.reverse(score_fn).drift(x, t) * expand_like(dt, x)
        return mean, sde.diffusion(t) * (-dt).sqrt()


class ReverseDiffusionPredictor(Predictor):
    """The SDE's own discretization run backward (Song et al. 2021, App. E, Eq. 46).

    With the forward step ``x_t = x_{t_next} + F + G z`` of ``sde.discretize``:
    ``mu = x - F + G^2 s(x, t)``, ``sigma = G`` (via ``sde.reverse(score).discretize``). For the VP
    SDE's DDPM chain and the VE SDE's NCSN chain this is the paper's reverse-diffusion sampler; an SDE
    without its own chain falls back to Euler-Maruyama. Weak order 1.
    """

    def transition(self, sde, score_fn, x, t, t_next):
        t, t_next = batch_time(t, x), batch_time(t_next, x)
        drift, std = sde.reverse(score_fn).discretize(x, t, t - t_next)
        return x + drift, std


class AncestralPredictor(Predictor):
    """Ancestral sampling derived from the perturbation kernel, for any Gaussian-kernel SDE.

    Between grid times the forward chain is ``x_t = a x_{t_next} + sqrt(v) z`` with
    ``a = m(t) / m(t_next)`` and ``v = s(t)^2 - a^2 s(t_next)^2 = -s(t)^2 expm1(lambda_t - lambda_next)``
    (``lambda`` the log-SNR; the expm1 form keeps ``v`` accurate for small steps). The step samples the
    posterior ``q(x_{t_next} | x_t, x0_hat)`` at Tweedie's ``x0_hat = (x + s(t)^2 score) / m(t)``
    (Ho et al. 2020, Eq. 7), which simplifies to

        mu = (x + v score(x, t)) / a,      sigma^2 = v s(t_next)^2 / s(t)^2   (variance="posterior").

    VE (``a = 1``): exactly NCSN's ancestral step ``x + (s_i^2 - s_{i-1}^2) score`` with variance
    ``s_{i-1}^2 (s_i^2 - s_{i-1}^2) / s_i^2`` (docs/references.md, discretizations). VP: DDPM's step ``(x + beta score) /
    sqrt(1 - beta)`` with ``beta = v = 1 - abar_t / abar_next``, which differs from the SDE's
    ``beta(t) dt`` by ``O(dt^2)``, and DDPM's posterior variance ``beta_tilde``; ``variance="forward"``
    uses ``sigma^2 = v`` instead, DDPM's other choice ``sigma^2 = beta`` (Ho et al. 2020, Sec. 3.2),
    which is what Song et al.'s VP ancestral formula (and the score_sde code) uses. Weak order 1.
    """

    requires_kernel = True

    def __init__(self, variance: str = "posterior"):
        if variance not in ("posterior", "forward"):
            raise ValueError(
                f"variance must be 'posterior' (DDPM's beta_tilde, NCSN's ancestral variance) or "
                f"'forward' (DDPM's sigma^2 = beta), got {variance!r}"
            )
        self.variance = variance

    def transition(self, sde, score_fn, x, t, t_next):
        t, t_next = batch_time(t, x), batch_time(t_next, x)
        (m_t, s_t), (m_next, s_next) = sde.kernel(t), sde.kernel(t_next)
        a = m_t / m_next
        v = -(s_t**2) * torch.expm1(sde.log_snr(t) - sde.log_snr(t_next))
        mean = (x + expand_like(v, x) * score_fn(x, t)) / expand_like(a, x)
        var = v * s_next**2 / s_t**2 if self.variance == "posterior" else v
        return mean, var.sqrt()

    def __repr__(self) -> str:
        return f"AncestralPredictor(variance={self.variance!r})"


class NoPredictor(Predictor):
    """Leaves ``x`` unchanged (corrector-only sampling, e.g. annealed Langevin dynamics); no NFE."""

    order = None

    def transition(self, sde, score_fn, x, t, t_next):
        return x, torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)

    def step(self, sde, score_fn, x, t, t_next, generator=None):
        return x, x
