"""Time weightings for score matching: how ``t`` is drawn and the weight ``lambda(t)`` applied.

The objective is ``E_t [ lambda(t) E || s_theta(x_t, t) - grad log p_0t(x_t | x_0) ||^2 ]`` with
``t ~ U(eps, T)`` (Song et al. 2021, Eq. 7). A weighting object draws ``t`` and returns the weight
that makes the per-sample value an unbiased estimate of that objective, so importance sampling of
``t`` changes the variance and never the expectation.

A weighting is any object with ``sample_time(sde, batch, eps, *, generator, device, dtype) -> (B,)``
and ``weight(sde, t, eps) -> lambda(t)``. Denoising score matching computes the loss as
``(lambda / s^2) || s s_theta + z ||^2``; a weighting may also give that ratio directly as
``weight_over_variance(sde, t, eps)`` (a float or a ``(B,)`` tensor), which the loss then uses
instead of dividing by ``s(t)^2``: exact (no cancellation at small ``s``) and cheaper (no kernel
evaluation for the eps loss, whose ratio is 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..sdes.base import SDE


def _uniform_time(batch: int, eps: float, T: float, generator, device, dtype) -> Tensor:
    u = torch.rand(batch, generator=generator, device=device, dtype=dtype)
    return eps + (T - eps) * u


class NoiseWeighting:
    """``lambda(t) = s(t)^2``: the eps-prediction loss ``|| s(t) s_theta + z ||^2`` (Ho et al. 2020)."""

    needs_kernel = True

    def sample_time(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        return _uniform_time(batch, eps, sde.T, generator, device, dtype)

    def weight(self, sde: SDE, t: Tensor, eps: float) -> Tensor:
        return sde.kernel(t)[1] ** 2

    def weight_over_variance(self, sde: SDE, t: Tensor, eps: float) -> float:
        return 1.0

    def __repr__(self) -> str:
        return "NoiseWeighting()"


def discrete_chain(sde: SDE, what: str):
    """The DDPM chain behind ``sde`` (its ``discrete`` attribute: :class:`~sde_diffusion.sdes.DDPMSDE`),
    or a ValueError naming ``what`` needs it."""
    chain = getattr(sde, "discrete", None)
    if chain is None:
        raise ValueError(
            f"{what} needs a discrete-time SDE (sde=ddpm or sde=ddpm_cosine: DDPMSDE); {type(sde).__name__} has no discrete chain"
        )
    return chain


class DiscreteStepWeighting(NoiseWeighting):
    """DDPM's simple loss ``|| eps - eps_theta(sqrt(abar_i) x0 + sqrt(1 - abar_i) eps, i) ||^2`` with the
    step ``i`` uniform in ``{1, ..., T}`` (Ho et al. 2020, Eq. 14 and Alg. 1), on a discrete-time SDE
    (:class:`~sde_diffusion.sdes.DDPMSDE`): ``t = i / T``, where the SDE's kernel is the chain's.
    The weight is :class:`NoiseWeighting`'s ``lambda = s^2``; ``eps`` (the loss's lower time limit)
    plays no part."""

    def sample_time(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        T = discrete_chain(sde, "DiscreteStepWeighting (loss=ddpm_simple)").T
        i = torch.randint(1, T + 1, (batch,), generator=generator, device=device)
        return i.to(dtype or torch.get_default_dtype()) / T

    def __repr__(self) -> str:
        return "DiscreteStepWeighting()"


class LikelihoodWeighting:
    """``lambda(t) = g(t)^2``: the loss bounds the negative log-likelihood (Song, Durkan et al. 2021, Thm. 1)."""

    needs_kernel = False

    def sample_time(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        return _uniform_time(batch, eps, sde.T, generator, device, dtype)

    def weight(self, sde: SDE, t: Tensor, eps: float) -> Tensor:
        return sde.diffusion(t) ** 2

    def __repr__(self) -> str:
        return "LikelihoodWeighting()"


class ImportanceLikelihoodWeighting:
    """Likelihood weighting with ``t`` importance-sampled from ``p(t) ∝ g(t)^2 / s(t)^2``.

    For any SDE with a Gaussian kernel and linear drift, ``g^2 / s^2 = d/dt log(s^2 / m^2)
    = -d/dt logSNR(t)``, so the normaliser is ``Z = logSNR(eps) - logSNR(T)`` and ``t`` is drawn by
    inverting ``logSNR`` (:meth:`SDE.time_from_log_snr`). The weight ``Z s(t)^2 / (T - eps)`` keeps
    the expectation equal to :class:`LikelihoodWeighting`'s (Song, Durkan et al. 2021, Sec. 5).
    """

    needs_kernel = True

    def _normaliser(self, sde: SDE, eps: float) -> float:
        ends = sde.log_snr(torch.tensor([eps, sde.T], dtype=torch.float64))
        return float(ends[0] - ends[1])

    def sample_time(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        start = sde.log_snr(torch.tensor(eps, dtype=torch.float64, device=device))
        t = sde.time_from_log_snr(start - u * self._normaliser(sde, eps), eps)
        return t.to(dtype or torch.get_default_dtype())

    def weight(self, sde: SDE, t: Tensor, eps: float) -> Tensor:
        return self.weight_over_variance(sde, t, eps) * sde.kernel(t)[1] ** 2

    def weight_over_variance(self, sde: SDE, t: Tensor, eps: float) -> float:
        return self._normaliser(sde, eps) / (sde.T - eps)

    def __repr__(self) -> str:
        return "ImportanceLikelihoodWeighting()"


class FlowMatchingWeighting:
    """``lambda(t) = g(t)^4 / 4`` with ``t ~ U(eps, T)``: denoising score matching that equals the
    conditional flow-matching loss ``|| v_theta(x_t, t) - (m'(t) x0 + s'(t) z) ||^2`` (Lipman et al.
    2023, Eq. 9) of the probability-flow velocity ``v_theta = f - g^2 s_theta / 2``.

    Why: at fixed ``x_t = m x0 + s z`` the velocity error is ``v_theta - u = (s' - a s)(eps_theta - z)``
    with ``a = d log m/dt``, ``eps_theta = -s s_theta``, and ``s' - a s = g^2 / (2s)`` (from
    ``g^2 = d s^2/dt - 2 a s^2``), so ``|| v_theta - u ||^2 = (g^2 / (2s))^2 || s s_theta + z ||^2 =
    (g^4 / 4) || s_theta + z / s ||^2``. For rectified flow ``g^2 = 2t / (1 - t)`` and the ratio to
    the eps loss is ``1 / (1 - t)^2``. The loss is per sample, exactly the flow-matching value (up to
    round-off) whichever parameterization computes ``s_theta``; :class:`VelocityParameterization`
    makes the network the flow-matching field.
    """

    needs_kernel = True

    def sample_time(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        return _uniform_time(batch, eps, sde.T, generator, device, dtype)

    def weight(self, sde: SDE, t: Tensor, eps: float) -> Tensor:
        return sde.diffusion(t) ** 4 / 4.0

    def weight_over_variance(self, sde: SDE, t: Tensor, eps: float) -> Tensor:
        return (sde.diffusion(t) ** 2 / (2.0 * sde.kernel(t)[1])) ** 2

    def __repr__(self) -> str:
        return "FlowMatchingWeighting()"
