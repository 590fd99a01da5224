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


def _time_derivatives(fns, t: Tensor) -> list[Tensor]:
    """``d fn(t) / dt`` elementwise for each of ``fns`` by one autograd pass, computed in float64 and
    returned in ``t``'s dtype.

    The derivative at ``t = 0`` is taken at ``t = 1e-60``: a path with ``s ~ sqrt(t)`` (every VP
    path) has ``ds/dt = inf`` there, and autograd's ``0 * inf`` would give NaN where the limit of
    ``d s^2 / dt`` is finite. (1e-60 leaves ``t^5`` above float64's smallest normal number.) A
    coefficient that does not depend on ``t`` (``torch.ones_like(t)``, a constant) has rate 0. Each
    function gets its own copy of ``t`` as a leaf, so one backward pass through the sum of all
    outputs returns every derivative separately (the functions are elementwise)."""
    t = torch.as_tensor(t)
    dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
    with torch.enable_grad():
        t64 = t.detach().to(torch.float64).clamp(min=1e-60)
        leaves = [t64.requires_grad_(True)] if len(fns) == 1 else [t64.clone().requires_grad_(True) for _ in fns]
        outs = [_as_coefficient(fn(u), u) for fn, u in zip(fns, leaves, strict=True)]
        live = [i for i, out in enumerate(outs) if out.requires_grad]  # the others do not depend on t
        grads: list[Tensor | None] = [None] * len(fns)
        if live:
            total = outs[live[0]].sum()
            for i in live[1:]:
                total = total + outs[i].sum()
            found = torch.autograd.grad(total, [leaves[i] for i in live], allow_unused=True)
            for i, grad in zip(live, found, strict=True):
                grads[i] = grad
    return [(torch.zeros_like(t64) if grad is None else grad).to(dtype) for grad in grads]


class GaussianPathSDE(SDE):
    """A forward SDE given by its perturbation kernel ``p_0t(x_t | x_0) = N(m(t) x_0, s(t)^2 I)``.

    A subclass implements :meth:`mean_coeff` (``m``, positive on ``[0, T)``) and :meth:`std`
    (``s``). It may also give, in closed form, :meth:`log_mean_coeff_rate` (``d log m / dt``) and
    :meth:`variance_rate` (``d s^2 / dt``); otherwise autograd computes them from ``m`` and ``s``.
    (These two rates rather than ``dm/dt`` and ``ds/dt``: both stay finite at ``t = 0``, where
    ``ds/dt`` of a VP path is infinite.) Derived here:

    - drift ``f(x, t) = (d log m / dt) x``;
    - diffusion ``g(t) = sqrt(d s^2/dt - 2 (d log m/dt) s^2)`` (clamped at 0 against round-off);
    - both at once, :meth:`flow_coefficients` ``(a(t), g(t)^2)``, the rates derived once (the
      probability-flow ODE and the reverse SDE read them through :meth:`drift_and_diffusion_squared`);
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
        return _time_derivatives((self._log_mean_coeff,), t)[0]

    def variance_rate(self, t: Tensor) -> Tensor:
        """``d s^2 / dt``, elementwise (autograd unless overridden)."""
        return _time_derivatives((self._variance,), t)[0]

    def _log_mean_coeff(self, t: Tensor) -> Tensor:
        return torch.log(_as_coefficient(self.mean_coeff(t), t))

    def _variance(self, t: Tensor) -> Tensor:
        return _as_coefficient(self.std(t), t) ** 2

    def _rates(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(d log m / dt, d s^2 / dt)``: the subclass's closed forms where it states them; the rates
        it leaves to autograd are derived together, in one backward pass."""
        cls = type(self)
        if cls.log_mean_coeff_rate is GaussianPathSDE.log_mean_coeff_rate and cls.variance_rate is GaussianPathSDE.variance_rate:
            rate_log_m, rate_var = _time_derivatives((self._log_mean_coeff, self._variance), t)
            return rate_log_m, rate_var
        return self.log_mean_coeff_rate(t), self.variance_rate(t)

    # --------------------------------------------------------------------------- derived facts
    def kernel(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        return _as_coefficient(self.mean_coeff(t), t), _as_coefficient(self.std(t), t)

    def flow_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a(t), g(t)^2)`` of the SDE ``dx = a(t) x dt + g(t) dw``, elementwise, from one derivation
        of the path's rates: ``a = d log m / dt`` and ``g^2 = d s^2/dt - 2 a s^2`` (the moment
        equations read backwards, module docstring; clamped at 0 against round-off). Everything the
        drift, the diffusion and the probability-flow ODE need at one time."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        a, rate_var = self._rates(t)
        s = _as_coefficient(self.std(t), t)
        return a, (rate_var - 2.0 * a * s**2).clamp(min=0.0)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return expand_like(self.log_mean_coeff_rate(batch_time(t, x)), x) * x

    def diffusion(self, t: Tensor) -> Tensor:
        return self.flow_coefficients(t)[1].sqrt()

    def drift_and_diffusion_squared(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``f(x, t) = a(t) x`` and ``g(t)^2`` from one :meth:`flow_coefficients` call."""
        a, g2 = self.flow_coefficients(batch_time(t, x))
        return expand_like(a, x) * x, g2

    @property
    def prior_std(self) -> float:
        return float(self.kernel(torch.tensor(float(self.T), dtype=torch.float64))[1])
