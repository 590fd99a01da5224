"""Correctors: Langevin MCMC at a fixed time ``t``, pulling samples towards ``p_t``.

Song et al. 2021, Sec. 4.2 and Alg. 4-5; Song & Ermon 2019, Alg. 1. Each of ``n_steps`` updates is

    x <- x + eps s(x, t) + sqrt(2 eps) z,    z ~ N(0, I),

and the correctors differ only in the step size ``eps`` ``(B,)``. A corrector runs after the predictor
has moved from ``t_prev`` to ``t < t_prev``; ``t_prev`` is passed for step sizes that depend on the
grid. Shapes: ``x`` is ``(B, *dims)``; ``t``, ``t_prev`` scalars, 0-d tensors or ``(B,)``.
"""

from __future__ import annotations

import abc

from torch import Tensor

from .._checks import check_range
from .._noise import NoiseSource, randn_like
from .._shapes import batch_time, expand_like
from ..sdes.base import SDE
from ..types import ScoreFn


class Corrector(abc.ABC):
    """A Markov kernel at fixed ``t`` that leaves ``p_t`` (approximately) invariant."""

    n_steps: int = 0
    """Score evaluations per application."""

    requires_kernel: bool = False
    """Whether the SDE must implement ``kernel(t)``; the samplers check it before the first step."""

    @abc.abstractmethod
    def step(
        self,
        sde: SDE,
        score_fn: ScoreFn,
        x: Tensor,
        t: float | Tensor,
        t_prev: float | Tensor,
        generator: NoiseSource = None,
    ) -> tuple[Tensor, Tensor]:
        """Apply the corrector at time ``t``; returns ``(x, x_mean)``, ``x_mean`` the last update's
        noiseless part (``x`` itself when nothing was done)."""


class NoCorrector(Corrector):
    """Does nothing (predictor-only sampling)."""

    def step(self, sde, score_fn, x, t, t_prev, generator=None):
        return x, x

    def __repr__(self) -> str:
        return "NoCorrector()"


class _LangevinDynamics(Corrector):
    """Unadjusted Langevin updates with a step size chosen by the subclass."""

    requires_kernel = True

    def __init__(self, n_steps: int):
        self.n_steps = check_range("n_steps", n_steps, low=1, integer=True, hint="use NoCorrector for none")

    @abc.abstractmethod
    def epsilon(self, sde: SDE, score: Tensor, z: Tensor, t: Tensor, t_prev: Tensor) -> Tensor:
        """Step size ``eps`` ``(B,)`` for the score ``score`` and noise ``z`` (both ``(B, *dims)``)."""

    def step(self, sde, score_fn, x, t, t_prev, generator=None):
        t, t_prev = batch_time(t, x), batch_time(t_prev, x)
        x_mean = x
        for _ in range(self.n_steps):
            score = score_fn(x, t)
            z = randn_like(x, generator)
            eps = expand_like(self.epsilon(sde, score, z, t, t_prev), x)
            x_mean = x + eps * score
            x = x_mean + (2.0 * eps).sqrt() * z
        return x, x_mean


class LangevinCorrector(_LangevinDynamics):
    """Langevin corrector with a signal-to-noise-ratio step size (Song et al. 2021, Alg. 4-5).

    ``eps = 2 alpha (r ||z|| / ||s||)^2`` with ``r = snr`` and ``alpha = (m(t_prev) / m(t))^2`` from the
    kernel: ``alpha = 1`` for VE and ``exp(-int_t^{t_prev} beta) = 1 - beta_i + O(dt^2)`` for VP and
    sub-VP (the paper's ``alpha_i = 1 - beta_i``; the score_sde code has no alpha for sub-VP).

    Args:
        snr: ``r``; the paper uses 0.16 for VE on CIFAR-10 and 0.01 for VP with reverse diffusion.
        n_steps: corrector steps ``M`` per grid time.
        norm: ``"sample"`` (default) takes ``||z||`` and ``||s||`` per sample over all of its
            dimensions; ``"batch"`` uses their batch means, as the score_sde code does, so every
            sample gets the same step.

    Per-sample norms make the step a function of the state, ``eps(x) ~ ||z||^2 / ||s(x)||^2``, with
    the same ``z`` in the step and the noise. In the small-step limit that is a time change of
    Langevin dynamics whose invariant density is ``p^(d/(d+2)) ||s||^2``, not ``p``: on a Gaussian
    the variance comes out ``(1 + 2/d)^2`` times too large whatever the snr (6 % at d = 64, nothing
    for images with thousands of dimensions), and in 2-D samples near a mode, where ``||s|| ~ 0``,
    get huge steps. Use ``norm="batch"`` for low-dimensional data; it is unbiased up to ``O(r^2)``.
    """

    def __init__(self, snr: float = 0.16, n_steps: int = 1, norm: str = "sample"):
        super().__init__(n_steps)
        snr = check_range("snr", snr, low=0, low_open=True, hint="0.16 for VE, 0.01 for VP")
        if norm not in ("sample", "batch"):
            raise ValueError(f"norm must be 'sample' (per-sample norms) or 'batch' (batch means), got {norm!r}")
        self.snr = snr
        self.norm = norm

    def epsilon(self, sde, score, z, t, t_prev):
        noise_norm = z.reshape(z.shape[0], -1).norm(dim=1)
        score_norm = score.reshape(score.shape[0], -1).norm(dim=1)
        if self.norm == "batch":
            noise_norm, score_norm = noise_norm.mean().expand_as(t), score_norm.mean().expand_as(t)
        alpha = (sde.kernel(t_prev)[0] / sde.kernel(t)[0]) ** 2
        return 2.0 * alpha * (self.snr * noise_norm / score_norm) ** 2

    def __repr__(self) -> str:
        return f"LangevinCorrector(snr={self.snr}, n_steps={self.n_steps}, norm={self.norm!r})"


class AnnealedLangevinCorrector(_LangevinDynamics):
    """Annealed Langevin dynamics of NCSN (Song & Ermon 2019, Alg. 1): ``eps = step_size * s(t)^2``.

    The step shrinks with the noise level so that ``eps ||s||`` stays of the order of the noise.
    NCSN writes ``x + alpha_i / 2 s + sqrt(alpha_i) z`` with ``alpha_i = epsilon sigma_i^2 / sigma_L^2``,
    i.e. ``step_size = epsilon / (2 sigma_L^2)``; its ``epsilon = 2e-5``, ``sigma_L = 0.01`` give 0.1.
    With :class:`NoPredictor` this is NCSN's sampler on the grid's noise levels.

    Args:
        step_size: dimensionless factor ``> 0``.
        n_steps: Langevin steps per grid time (NCSN: 100 per noise level).
    """

    def __init__(self, step_size: float = 0.1, n_steps: int = 1):
        super().__init__(n_steps)
        self.step_size = check_range("step_size", step_size, low=0, low_open=True, hint="NCSN's is 0.1")

    def epsilon(self, sde, score, z, t, t_prev):
        return self.step_size * sde.kernel(t)[1] ** 2

    def __repr__(self) -> str:
        return f"AnnealedLangevinCorrector(step_size={self.step_size}, n_steps={self.n_steps})"
