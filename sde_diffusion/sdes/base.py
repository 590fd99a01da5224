"""The abstract forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, T]``.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations"
(ICLR), Eq. 5. The SDE object owns every fact about itself; samplers, losses and the likelihood
only call these methods, so a user's subclass works everywhere without editing the library.
"""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .._noise import NoiseSource, randn, randn_like
from .._shapes import batch_time, expand_like, flat_dim
from ..types import ScoreFn

if TYPE_CHECKING:
    from .reverse import ProbabilityFlowODE, ReverseSDE


class SDE(abc.ABC):
    """Base class of forward SDEs with a state-independent, isotropic diffusion ``g(t)``.

    A subclass implements :meth:`drift`, :meth:`diffusion` and :attr:`prior_std`, and, when the
    perturbation kernel ``p_0t(x_t | x_0) = N(m(t) x_0, s(t)^2 I)`` is known in closed form,
    :meth:`kernel`. Everything else (marginal sampling, prior, Euler-Maruyama discretization,
    reverse-time SDE, probability-flow ODE, log-SNR) is derived here.

    The conversions between the predictions a network can make (score, noise ``eps``, clean data
    ``x0``, Salimans & Ho's ``v``, the probability-flow velocity) are methods here too, derived from
    the kernel (or from the drift and diffusion, for the velocity), so every parameterization,
    sampler and bound uses the same formulas on every SDE.

    Shapes: data ``x`` is ``(B, *dims)``; times and per-sample coefficients are ``(B,)``; methods
    that take a time accept a Python number or 0-d tensor as well and broadcast it over the batch.
    """

    T: float = 1.0
    """End of the forward time interval; the prior is reached at ``t = T``."""

    # ----------------------------------------------------------------- what a subclass provides
    @abc.abstractmethod
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift ``f(x, t)``, shape ``(B, *dims)``."""

    @abc.abstractmethod
    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient ``g(t)``, shape ``(B,)`` (same shape as ``t``)."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior ``p_T = N(0, prior_std^2 I)``."""

    def drift_and_diffusion_squared(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``f(x, t)`` (shape ``(B, *dims)``) and ``g(t)^2`` (shape ``(B,)``) together: what one
        evaluation of the reverse SDE or the probability-flow ODE needs (Song et al. 2021, Eq. 6 and
        13). By default :meth:`drift` and :meth:`diffusion` squared; a subclass whose two
        coefficients share work overrides it to do that work once
        (:meth:`~sde_diffusion.sdes.gaussian_path.GaussianPathSDE.flow_coefficients`)."""
        t = batch_time(t, x)
        return self.drift(x, t), self.diffusion(t) ** 2

    def kernel(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Coefficients ``(m(t), s(t))`` of the Gaussian perturbation kernel
        ``p_0t(x_t | x_0) = N(m(t) x_0, s(t)^2 I)``, each shaped like ``t``.

        Override it when the kernel has a closed form; denoising score matching, the parameterization
        wrappers and the fast samplers need it. SDEs without it can still be trained by sliced
        score matching and sampled by the generic samplers.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form perturbation kernel; implement "
            f"kernel(t) -> (mean_coeff, std) or use a loss that needs none (sliced score matching)"
        )

    # ----------------------------------------------------------------------------- derived facts
    @property
    def has_kernel(self) -> bool:
        """True when the subclass implements :meth:`kernel`."""
        return type(self).kernel is not SDE.kernel

    def marginal(self, x0: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``m(t) x0`` (shape ``(B, *dims)``) and std ``s(t)`` (shape ``(B,)``) of ``p_0t(. | x0)``."""
        m, s = self.kernel(batch_time(t, x0))
        return expand_like(m, x0) * x0, s

    def perturb(self, x0: Tensor, t: float | Tensor, *, generator: NoiseSource = None) -> tuple[Tensor, Tensor, Tensor]:
        """Draw ``x_t = m(t) x0 + s(t) z`` with ``z ~ N(0, I)``.

        Returns ``(x_t, z, s)`` with ``z`` shaped like ``x0`` and ``s`` of shape ``(B,)``.
        """
        mean, std = self.marginal(x0, t)
        z = randn_like(x0, generator)
        return mean + expand_like(std, x0) * z, z, std

    def log_snr(self, t: float | Tensor) -> Tensor:
        """Log signal-to-noise ratio ``lambda(t) = log(m(t)^2 / s(t)^2)``, decreasing in ``t``."""
        t = torch.as_tensor(t)
        m, s = self.kernel(t)
        return 2.0 * (torch.log(m) - torch.log(s))

    def time_from_log_snr(self, log_snr: Tensor, eps: float = 0.0, *, iterations: int = 60) -> Tensor:
        """Invert :meth:`log_snr` on ``[eps, T]`` by batched bisection (computed in float64).

        ``log_snr`` may have any shape; values outside ``[logSNR(T), logSNR(eps)]`` map to the ends.
        Works for any SDE with a kernel whose log-SNR decreases in ``t``. Returns float64 times.
        """
        target = torch.as_tensor(log_snr, dtype=torch.float64)
        lo = torch.full_like(target, eps)
        hi = torch.full_like(target, self.T)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            later = self.log_snr(mid) > target  # still above the target: the root lies later
            lo = torch.where(later, mid, lo)
            hi = torch.where(later, hi, mid)
        return 0.5 * (lo + hi)

    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        generator: NoiseSource = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``x_T ~ N(0, prior_std^2 I)`` of shape ``shape = (B, *dims)``."""
        z = randn(tuple(shape), generator, dtype=dtype or torch.get_default_dtype(), device=device)
        return self.prior_std * z

    def prior_logp(self, x: Tensor) -> Tensor:
        """Log-density of the prior at ``x`` (nats), shape ``(B,)``."""
        d = flat_dim(x)
        var = self.prior_std**2
        sq = x.reshape(x.shape[0], -1).pow(2).sum(dim=1)
        return -0.5 * d * math.log(2.0 * math.pi * var) - 0.5 * sq / var

    def discretize(self, x: Tensor, t: float | Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor]:
        """One forward step ``x_{t+dt} = x + F + G z`` with ``z ~ N(0, I)``; returns ``(F, G)``.

        The default is Euler-Maruyama: ``F = f(x, t) dt``, ``G = g(t) sqrt(dt)`` (shape ``(B,)``),
        with ``dt > 0``. Subclasses override it with their exact discrete chains (DDPM, NCSN).
        """
        t = batch_time(t, x)
        dt = batch_time(dt, x)
        return self.drift(x, t) * expand_like(dt, x), self.diffusion(t) * dt.sqrt()

    # --------------------------------------------------------- conversions on the Gaussian path
    # With x_t = m x0 + s eps, eps ~ N(0, I): the score S = grad log p_t(x_t) = -E[eps | x_t] / s,
    # the data prediction E[x0 | x_t] (Tweedie), Salimans & Ho's v and the probability-flow velocity
    # are one prediction in five coordinates. ``kernel``: (m(t), s(t)) when the caller holds them (a
    # sampler's table), numbers or tensors of shape () or (B,), used as given; by default the kernel
    # is evaluated at t. All inputs and outputs are (B, *dims); t is a number, a 0-d tensor or (B,).
    def _coefficients(self, t: float | Tensor, like: Tensor, kernel: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """``(m(t), s(t))`` reshaped to broadcast against ``like`` ``(B, *dims)``. Evaluated in the
        wider of ``like``'s dtype and ``t``'s (the default dtype for a number), so a half-precision
        network output never rounds the time or the kernel."""
        if kernel is not None:
            m, s = (torch.as_tensor(c, device=like.device) for c in kernel)
        else:
            t = torch.as_tensor(t, device=like.device)
            dtype = torch.promote_types(like.dtype, t.dtype if t.is_floating_point() else torch.get_default_dtype())
            m, s = self.kernel(batch_time(t, like.new_empty(like.shape[:1], dtype=dtype)))
        return expand_like(m, like), expand_like(s, like)

    def eps_from_score(self, score: Tensor, t: float | Tensor, *, kernel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The noise prediction ``eps = -s(t) score``: the kernel's score is ``-(x - m x0) / s^2 = -eps / s``
        (Vincent 2011), so a score is ``-E[eps | x_t] / s`` (Ho et al. 2020's eps-prediction)."""
        _, s = self._coefficients(t, score, kernel)
        return -s * score

    def score_from_eps(self, eps: Tensor, t: float | Tensor, *, kernel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The score ``-eps / s(t)`` of a noise prediction (inverse of :meth:`eps_from_score`)."""
        _, s = self._coefficients(t, eps, kernel)
        return eps / -s

    def x0_from_score(self, x: Tensor, score: Tensor, t: float | Tensor, *, kernel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Tweedie's denoiser ``E[x0 | x_t = x] = (x + s(t)^2 score) / m(t)`` (Robbins 1956; Efron 2011,
        "Tweedie's Formula and Selection Bias", for the kernel ``N(m x0, s^2 I)``): exact when ``score``
        is the score of ``p_t``, a score model's data prediction otherwise."""
        m, s = self._coefficients(t, x, kernel)
        return (x + s**2 * score) / m

    def score_from_x0(self, x: Tensor, x0: Tensor, t: float | Tensor, *, kernel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The score ``(m(t) x0 - x) / s(t)^2`` of a data prediction ``x0`` at ``x`` (inverse of
        :meth:`x0_from_score`; Karras et al. 2022, Eq. 3, in the path's ``m`` and ``s``)."""
        m, s = self._coefficients(t, x, kernel)
        return (m * x0 - x) / s**2

    def x0_from_eps(self, x: Tensor, eps: Tensor, t: float | Tensor, *, kernel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The data prediction ``(x - s(t) eps) / m(t)`` of a noise prediction (Ho et al. 2020, Eq. 15)."""
        m, s = self._coefficients(t, x, kernel)
        return (x - s * eps) / m

    def eps_from_x0(self, x: Tensor, x0: Tensor, t: float | Tensor, *, kernel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The noise prediction ``(x - m(t) x0) / s(t)`` of a data prediction (inverse of :meth:`x0_from_eps`)."""
        m, s = self._coefficients(t, x, kernel)
        return (x - m * x0) / s

    def v_from_eps_x0(self, eps: Tensor, x0: Tensor, t: float | Tensor, *, kernel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Salimans & Ho's ``v = m(t) eps - s(t) x0`` (Salimans & Ho 2022, "Progressive Distillation",
        Sec. 4, written for any kernel; with ``m^2 + s^2 = 1`` it is their ``alpha eps - sigma x``)."""
        m, s = self._coefficients(t, eps, kernel)
        return m * eps - s * x0

    def score_from_v(self, x: Tensor, v: Tensor, t: float | Tensor, *, kernel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The score of a ``v`` prediction. Inverting ``[x; v] = [[m, s], [-s, m]] [x0; eps]`` gives
        ``eps = (s x + m v) / (m^2 + s^2)``, so ``score = -(s x + m v) / (s (m^2 + s^2))``."""
        m, s = self._coefficients(t, x, kernel)
        return -(s * x + m * v) / (s * (m**2 + s**2))

    def velocity_from_score(self, x: Tensor, score: Tensor, t: float | Tensor) -> Tensor:
        """The probability-flow velocity ``f(x, t) - g(t)^2 score / 2`` (Song et al. 2021, Eq. 13); for
        a Gaussian path, the flow-matching field ``E[m'(t) x0 + s'(t) eps | x_t]`` (Lipman et al. 2023,
        Eq. 8). Needs only the drift and the diffusion (one :meth:`drift_and_diffusion_squared` call),
        not the kernel."""
        drift, g2 = self.drift_and_diffusion_squared(x, batch_time(t, x))
        return drift - 0.5 * expand_like(g2, x) * score

    def score_from_velocity(self, x: Tensor, velocity: Tensor, t: float | Tensor) -> Tensor:
        """The score ``2 (f(x, t) - velocity) / g(t)^2`` of a velocity prediction (inverse of
        :meth:`velocity_from_score`; times with ``g(t) > 0``)."""
        drift, g2 = self.drift_and_diffusion_squared(x, batch_time(t, x))
        return 2.0 * (drift - velocity) / expand_like(g2, x)

    def reverse(self, score_fn: ScoreFn) -> ReverseSDE:
        """The reverse-time SDE driven by ``score_fn`` (Anderson 1982; Song et al. 2021, Eq. 6)."""
        from .reverse import ReverseSDE

        return ReverseSDE(self, score_fn)

    def probability_flow(self, score_fn: ScoreFn) -> ProbabilityFlowODE:
        """The probability-flow ODE driven by ``score_fn`` (Song et al. 2021, Eq. 13)."""
        from .reverse import ProbabilityFlowODE

        return ProbabilityFlowODE(self, score_fn)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
