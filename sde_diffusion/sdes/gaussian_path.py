"""Kernel-first SDEs: the Gaussian path ``x_t = m(t) x_0 + s(t) z`` is the one source of truth.

A linear SDE ``dx = a(t) x dt + g(t) dw`` started at ``x_0`` has the Gaussian marginal
``N(m(t) x_0, s(t)^2 I)`` with ``dm/dt = a m`` and ``d(s^2)/dt = 2 a s^2 + g^2`` (the moment
equations of Särkkä & Solin 2019, Eq. 5.50-5.51, which Song et al. 2021 solve in App. B). Read
backwards, any smooth path with ``m > 0`` and ``s`` increasing fast enough defines the SDE

    a(t) = d log m / dt,        g(t)^2 = d s^2 / dt - 2 a(t) s(t)^2,

so a subclass of :class:`GaussianPathSDE` states ``m(t)`` and ``s(t)`` and gets the drift, the
diffusion, the kernel, the log-SNR and the prior, which cannot disagree with each other (Kingma et
al. 2021, "Variational Diffusion Models", write the VP family this way; Lipman et al. 2023, "Flow
Matching", use the same paths as flows).
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from .._shapes import batch_time, expand_like
from .base import SDE


def _as_coefficient(value, t: Tensor) -> Tensor:
    """A path coefficient as a tensor shaped and typed like ``t``: a user's ``m(t)`` may be a number,
    a 0-d tensor or ``torch.ones_like(t)`` (a VE-type path, ``m = 1``), none of which depend on ``t``."""
    value = torch.as_tensor(value, dtype=t.dtype, device=t.device)
    return value.expand(t.shape) if value.shape != t.shape else value


def _time_derivative(fn, t: Tensor) -> Tensor:
    """``d fn(t) / dt`` elementwise by autograd, computed in float64 and returned in ``t``'s dtype.

    The derivative at ``t = 0`` is taken at ``t = 1e-60``: a path with ``s ~ sqrt(t)`` (every VP
    path) has ``ds/dt = inf`` there, and autograd's ``0 * inf`` would give NaN where the limit of
    ``d s^2 / dt`` is finite. (1e-60 leaves ``t^5`` above float64's smallest normal number.) A
    coefficient that does not depend on ``t`` (``torch.ones_like(t)``, a constant) has rate 0."""
    t = torch.as_tensor(t)
    dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
    with torch.enable_grad():
        t64 = t.detach().to(torch.float64).clamp(min=1e-60).requires_grad_(True)
        out = _as_coefficient(fn(t64), t64)
        if not out.requires_grad:  # no graph back to t: a constant coefficient
            return torch.zeros_like(t64).to(dtype)
        (grad,) = torch.autograd.grad(out.sum(), t64, allow_unused=True)
    return (torch.zeros_like(t64) if grad is None else grad).to(dtype)


class GaussianPathSDE(SDE):
    """A forward SDE given by its perturbation kernel ``p_0t(x_t | x_0) = N(m(t) x_0, s(t)^2 I)``.

    A subclass implements :meth:`mean_coeff` (``m``, positive on ``[0, T)``) and :meth:`std`
    (``s``). It may also give, in closed form, :meth:`log_mean_coeff_rate` (``d log m / dt``) and
    :meth:`variance_rate` (``d s^2 / dt``); otherwise autograd computes them from ``m`` and ``s``.
    (These two rates rather than ``dm/dt`` and ``ds/dt``: both stay finite at ``t = 0``, where
    ``ds/dt`` of a VP path is infinite.) Derived here:

    - drift ``f(x, t) = (d log m / dt) x``;
    - diffusion ``g(t) = sqrt(d s^2/dt - 2 (d log m/dt) s^2)`` (clamped at 0 against round-off);
    - ``kernel(t) = (m(t), s(t))``, ``log_snr(t) = 2 log(m / s)`` and its inverse (bisection unless
      the subclass overrides :meth:`time_from_log_snr` with a closed form);
    - the prior ``N(0, prior_std^2 I)`` with ``prior_std = s(T)``, the marginal's spread at ``T``
      when ``m(T) x_0`` is negligible (override it to state a rounder value, e.g. 1 for VP).

    Shapes follow :class:`~sde_diffusion.sdes.base.SDE`: ``t`` is a number, a 0-d tensor or ``(B,)``;
    the coefficient methods work elementwise on tensors of any shape.
    """

    @abc.abstractmethod
    def mean_coeff(self, t: Tensor) -> Tensor:
        """``m(t)``, elementwise."""

    @abc.abstractmethod
    def std(self, t: Tensor) -> Tensor:
        """``s(t)``, elementwise."""

    def log_mean_coeff_rate(self, t: Tensor) -> Tensor:
        """``d log m / dt``, elementwise (autograd unless overridden)."""
        return _time_derivative(lambda u: torch.log(_as_coefficient(self.mean_coeff(u), u)), t)

    def variance_rate(self, t: Tensor) -> Tensor:
        """``d s^2 / dt``, elementwise (autograd unless overridden)."""
        return _time_derivative(lambda u: _as_coefficient(self.std(u), u) ** 2, t)

    # --------------------------------------------------------------------------- derived facts
    def kernel(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        return _as_coefficient(self.mean_coeff(t), t), _as_coefficient(self.std(t), t)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return expand_like(self.log_mean_coeff_rate(batch_time(t, x)), x) * x

    def diffusion(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        g2 = self.variance_rate(t) - 2.0 * self.log_mean_coeff_rate(t) * self.kernel(t)[1] ** 2
        return g2.clamp(min=0.0).sqrt()

    @property
    def prior_std(self) -> float:
        return float(self.kernel(torch.tensor(float(self.T), dtype=torch.float64))[1])
