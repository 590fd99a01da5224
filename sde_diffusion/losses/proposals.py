"""Noise-level proposals: the law the training time ``t`` of a score-matching loss is drawn from.

A proposal draws ``t`` in the path's ``[eps, T]`` and states its density ``q`` over one
``measure``: the time ``t`` itself, or the log-SNR ``lambda = log(m^2 / s^2)``
(:meth:`~sde_diffusion.sdes.SDE.log_snr`), where a law of noise levels is the same on every path.
Its :meth:`~Proposal.importance` ``1 / ((T - eps) q)`` is the weight that makes a draw stand for
``t ~ U(eps, T)``, so with it the loss has the expectation its weighting states
(:mod:`.weighting`), whichever proposal drew the times: a proposal changes the variance of the
loss, never its expectation (Kingma & Gao 2023, "Understanding Diffusion Objectives as the ELBO
with Simple Data Augmentation", Sec. 2: the noise schedule acts as an importance sampler).

Between the two measures the Jacobian is the path's own rate of log-SNR, :func:`log_snr_speed`.
A law over all noise levels (the normal laws below) is truncated to the path's range and
renormalised, so every draw lies in ``[eps, T]`` and the density stays exact.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from .._checks import check_range
from ..sdes.base import SDE

MEASURES = ("t", "log_snr")
"""What a proposal's density, or a weighting's value, is stated per unit of."""


def log_snr_speed(sde: SDE, t: Tensor) -> Tensor:
    """``-d lambda / dt = g(t)^2 / s(t)^2`` at the times ``t`` ``(B,)``, in ``t``'s dtype.

    For a linear SDE ``dm/dt = a m`` and ``d s^2/dt = 2 a s^2 + g^2`` (Särkkä & Solin 2019,
    Eq. 5.50-5.51), so ``d/dt log(s^2 / m^2) = g^2 / s^2``: the path's own drift and kernel give the
    Jacobian between a density over ``lambda`` and one over ``t`` exactly, on every path with a kernel
    (:class:`~sde_diffusion.sdes.GaussianPathSDE` derives ``g`` from ``m`` and ``s``)."""
    return sde.diffusion(t) ** 2 / sde.kernel(t)[1] ** 2


def discrete_chain(sde: SDE, what: str):
    """The DDPM chain behind ``sde`` (its ``discrete`` attribute: :class:`~sde_diffusion.sdes.DDPMSDE`),
    or a ValueError naming ``what`` needs it."""
    chain = getattr(sde, "discrete", None)
    if chain is None:
        raise ValueError(
            f"{what} needs a discrete-time SDE (sde=ddpm or sde=ddpm_cosine: DDPMSDE); {type(sde).__name__} has no discrete chain"
        )
    return chain


def _log_snr_range(sde: SDE, eps: float, device=None) -> tuple[float, float]:
    """``(lambda(T), lambda(eps))``, the path's log-SNR range, float64 numbers."""
    ends = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64, device=device))
    return float(ends[0]), float(ends[1])


class _TruncatedNormal:
    """``N(mean, std^2)`` truncated to ``[low, high]`` (either end may be infinite), in float64.

    Drawn by the inverse CDF on the side of the mean where the CDF keeps its digits (an interval
    far in the upper tail is drawn as the mirror of one in the lower tail)."""

    def __init__(self, mean: float, std: float, low: float, high: float):
        self.mean, self.std = mean, std
        self.flip = (low - mean) + (high - mean) > 0
        a, b = (low - mean) / std, (high - mean) / std
        self.a, self.b = (-b, -a) if self.flip else (a, b)
        ends = torch.special.ndtr(torch.tensor([self.a, self.b], dtype=torch.float64))
        self.cdf_a, self.mass = float(ends[0]), float(ends[1] - ends[0])
        if not self.mass > 0:
            raise ValueError(
                f"N({mean:g}, {std:g}^2) puts no probability on [{low:g}, {high:g}], the path's range: move its mean into the range"
            )

    def sample(self, batch: int, generator, device) -> Tensor:
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        z = torch.special.ndtri(self.cdf_a + self.mass * u).clamp(min=self.a, max=self.b)
        return self.mean + self.std * (-z if self.flip else z)

    def density(self, x: Tensor) -> Tensor:
        z = (x.to(torch.float64) - self.mean) / self.std
        return torch.exp(-0.5 * z**2) / (self.std * self.mass * (2 * torch.pi) ** 0.5)


class Proposal(abc.ABC):
    """The law of the training time ``t`` in ``[eps, T]``.

    A subclass states its ``measure`` (``"t"`` or ``"log_snr"``), whether it ``needs_kernel``, and
    implements :meth:`sample` and :meth:`importance`. Times and weights are ``(B,)`` tensors."""

    measure: str = "t"
    needs_kernel: bool = True

    @abc.abstractmethod
    def sample(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        """``batch`` times in ``[eps, sde.T]``, shape ``(B,)``, of ``dtype`` (default: torch's)."""

    @abc.abstractmethod
    def importance(self, sde: SDE, t: Tensor, eps: float) -> Tensor | float:
        """``1 / ((T - eps) q)`` at the times ``t``, ``q`` the density over :attr:`measure` (a number
        where it is constant): the weight that makes a draw stand for ``t ~ U(eps, T)``."""

    def density(self, sde: SDE, t: Tensor, eps: float) -> Tensor:
        """The density of the draws over ``t``: ``q`` times ``|d lambda / dt|`` for a log-SNR proposal."""
        q = 1.0 / ((sde.T - eps) * torch.as_tensor(self.importance(sde, t, eps), dtype=t.dtype))
        return q * log_snr_speed(sde, t) if self.measure == "log_snr" else q.expand(t.shape)


class UniformTimeProposal(Proposal):
    """``t ~ U(eps, T)`` (Song et al. 2021, Eq. 7): importance 1. ``loss.proposal=uniform_t``."""

    needs_kernel = False

    def sample(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        u = torch.rand(batch, generator=generator, device=device, dtype=dtype)
        return eps + (sde.T - eps) * u

    def importance(self, sde: SDE, t: Tensor, eps: float) -> float:
        return 1.0

    def __repr__(self) -> str:
        return "UniformTimeProposal()"


class UniformLogSNRProposal(Proposal):
    """``lambda ~ U(lambda(T), lambda(eps))``, ``t`` by inverting the log-SNR
    (:meth:`~sde_diffusion.sdes.SDE.time_from_log_snr`): the density over ``t`` is ``|d lambda/dt| / Z``
    with ``Z = lambda(eps) - lambda(T)``, i.e. ``p(t) ∝ g^2 / s^2``, the proposal under which the
    likelihood weighting has importance ``Z / (T - eps)`` (Song, Durkan et al. 2021, Sec. 5).
    ``loss.proposal=uniform_log_snr``."""

    measure = "log_snr"

    def sample(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        start = sde.log_snr(torch.tensor(eps, dtype=torch.float64, device=device))
        t = sde.time_from_log_snr(start - u * self._normaliser(sde, eps), eps)
        return t.to(dtype or torch.get_default_dtype())

    def _normaliser(self, sde: SDE, eps: float) -> float:
        lam_T, lam_eps = _log_snr_range(sde, eps)
        return lam_eps - lam_T

    def importance(self, sde: SDE, t: Tensor, eps: float) -> float:
        return self._normaliser(sde, eps) / (sde.T - eps)

    def __repr__(self) -> str:
        return "UniformLogSNRProposal()"


class LogNormalProposal(Proposal):
    """EDM's noise levels, ``ln sigma ~ N(P_mean, P_std^2)`` with ``sigma = s/m`` (Karras et al. 2022,
    Table 1: ``P_mean = -1.2``, ``P_std = 1.2``), i.e. ``lambda = -2 ln sigma ~ N(-2 P_mean, (2 P_std)^2)``,
    truncated to the path's ``[lambda(T), lambda(eps)]`` and renormalised; ``t`` by inverting the
    log-SNR. The same law of noise levels on every path. ``loss.proposal=log_normal``."""

    measure = "log_snr"

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2):
        self.P_mean = check_range("P_mean", P_mean, hint="the mean of ln sigma; EDM uses -1.2")
        self.P_std = check_range("P_std", P_std, low=0, low_open=True, hint="the standard deviation of ln sigma; EDM uses 1.2")

    def law(self, sde: SDE, eps: float) -> _TruncatedNormal:
        lam_T, lam_eps = _log_snr_range(sde, eps)
        return _TruncatedNormal(-2.0 * self.P_mean, 2.0 * self.P_std, lam_T, lam_eps)

    def sample(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        lam = self.law(sde, eps).sample(batch, generator, device)
        return sde.time_from_log_snr(lam, eps).to(dtype or torch.get_default_dtype())

    def importance(self, sde: SDE, t: Tensor, eps: float) -> Tensor:
        q = self.law(sde, eps).density(sde.log_snr(t.to(torch.float64)))
        return (1.0 / ((sde.T - eps) * q)).to(t.dtype)

    def __repr__(self) -> str:
        return f"LogNormalProposal(P_mean={self.P_mean:g}, P_std={self.P_std:g})"


class LogitNormalProposal(Proposal):
    """SD3's times, ``logit(t) ~ N(mean, std^2)`` (Esser et al. 2024, Sec. 3.1, best at ``mean = 0``,
    ``std = 1`` for rectified flow), truncated to ``[eps, T]`` and renormalised: density
    ``N(logit t; mean, std^2) / (t (1 - t) Z)`` over ``t``. The times must lie in ``(0, 1)``: a path
    whose ``T`` exceeds 1 (``sde=edm``) is refused. On rectified flow ``logit t = ln sigma``, so this
    is :class:`LogNormalProposal` with ``P_mean = mean``, ``P_std = std``. ``loss.proposal=logit_normal``."""

    needs_kernel = False

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean = check_range("mean", mean, hint="the mean of logit(t); SD3 uses 0")
        self.std = check_range("std", std, low=0, low_open=True, hint="the standard deviation of logit(t); SD3 uses 1")

    def law(self, sde: SDE, eps: float) -> _TruncatedNormal:
        if sde.T > 1:
            raise ValueError(
                f"LogitNormalProposal draws times in (0, 1), but {type(sde).__name__} runs to T = {sde.T:g}: "
                "use LogNormalProposal (loss.proposal=log_normal), a law over noise levels"
            )
        return _TruncatedNormal(self.mean, self.std, _logit(eps), _logit(sde.T))

    def sample(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        return torch.sigmoid(self.law(sde, eps).sample(batch, generator, device)).to(dtype or torch.get_default_dtype())

    def importance(self, sde: SDE, t: Tensor, eps: float) -> Tensor:
        t64 = t.to(torch.float64)
        q = self.law(sde, eps).density(torch.logit(t64)) / (t64 * (1 - t64))
        return (1.0 / ((sde.T - eps) * q)).to(t.dtype)

    def __repr__(self) -> str:
        return f"LogitNormalProposal(mean={self.mean:g}, std={self.std:g})"


def _logit(t: float) -> float:
    return float(torch.logit(torch.tensor(t, dtype=torch.float64)))


class DiscreteTimeProposal(Proposal):
    """``t = T i / N`` with the step ``i`` uniform in ``{1, ..., N}``: DDPM's steps (Ho et al. 2020,
    Eq. 14 and Alg. 1; ``n_steps="auto"`` is the chain's ``T`` of a
    :class:`~sde_diffusion.sdes.DDPMSDE`, whose kernel at ``i / T`` is the chain's). Importance 1:
    each step stands for its ``1/N`` of the time, so the expectation is the rectangle rule of the
    uniform-``t`` objective on ``N`` steps, equal to it up to ``O(1/N)``; the draws have no density
    over ``t``. The first step ``T / N`` must not lie below ``eps``. ``loss.proposal=discrete``."""

    needs_kernel = False

    def __init__(self, n_steps: int | str = "auto"):
        if n_steps != "auto":
            check_range("n_steps", n_steps, low=1, integer=True, hint="the number of steps, or auto for a DDPM chain's")
        self.n_steps = n_steps

    def steps(self, sde: SDE, eps: float) -> int:
        n = discrete_chain(sde, "DiscreteTimeProposal(n_steps='auto')").T if self.n_steps == "auto" else int(self.n_steps)
        if sde.T / n < eps:
            raise ValueError(f"DiscreteTimeProposal's first step T / n_steps = {sde.T / n:g} lies below eps = {eps:g}: use fewer steps")
        return n

    def sample(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        n = self.steps(sde, eps)
        i = torch.randint(1, n + 1, (batch,), generator=generator, device=device)
        return i.to(dtype or torch.get_default_dtype()) / n * sde.T

    def importance(self, sde: SDE, t: Tensor, eps: float) -> float:
        return 1.0

    def density(self, sde: SDE, t: Tensor, eps: float) -> Tensor:
        raise ValueError("DiscreteTimeProposal draws N steps of mass 1/N each: no density over t")

    def __repr__(self) -> str:
        return f"DiscreteTimeProposal(n_steps={self.n_steps!r})"
