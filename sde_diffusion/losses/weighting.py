"""Weightings of the noise levels in score matching, stated as functions of the log-SNR.

Every weighting states one objective over the path's times ``[eps, T]``,

    J = E_{t ~ U(eps, T)} [ omega(t) E || eps_theta(x_t, t) - z ||^2 ],   x_t = m(t) x0 + s(t) z,

on the noise-prediction error, ``eps_theta = -s s_theta``. (On the score error the weight is
``lambda(t) = s^2 omega``, Song et al. 2021, Eq. 7; on the data-prediction error it is
``omega e^lambda``, since ``x0_theta - x0 = -(s/m) (eps_theta - z)`` and ``e^lambda = m^2 / s^2``.)
A weighting gives its :meth:`~Weighting.value` per unit of one measure
(:data:`~sde_diffusion.losses.proposals.MEASURES`):

- ``"t"``: ``omega(t)`` itself, a weight relative to uniform ``t``;
- ``"log_snr"``: ``w(lambda)`` with ``omega = w |d lambda / dt|``, i.e.
  ``J = (1 / (T - eps)) int w(lambda) E || eps_theta - z ||^2 d lambda``: Kingma & Gao's weighted loss
  (2023, Sec. 2 and Table 1, without their factor 1/2), the same on every path over the same
  range of log-SNR.

The times are drawn by a proposal (:mod:`.proposals`); :class:`ImportanceSampled` weighs each draw
by the proposal's importance, so the loss's expectation is ``J`` whichever proposal drew it. The
per-sample loss is ``F(t) || eps_theta - z ||^2`` with ``F = value x importance`` when the two
measures agree, and the Jacobian ``|d lambda / dt| = g^2 / s^2``
(:func:`~sde_diffusion.losses.proposals.log_snr_speed`) between them otherwise. Each weighting has its
own proposal, used when none is given: uniform ``t`` for all but :class:`EDMWeighting` (its own
log-normal law, so its draws carry EDM's loss weight alone) and the two classes that name a pair,
:class:`ImportanceLikelihoodWeighting` and :class:`DiscreteStepWeighting`.

Any object with ``sample_time(sde, batch, eps, *, generator, device, dtype) -> (B,)`` and
``weight(sde, t, eps) -> lambda(t)`` (and optionally ``weight_over_variance(sde, t, eps) -> F``) is
a weighting to the losses too, drawing its own times; a :class:`Weighting` also takes a proposal.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from .._checks import check_range
from ..sdes.base import SDE
from .proposals import DiscreteTimeProposal, LogNormalProposal, Proposal, UniformLogSNRProposal, UniformTimeProposal, log_snr_speed


def _noise_variance(sde: SDE, t: Tensor) -> Tensor:
    """``sigma^2 = (s/m)^2 = e^-lambda``, the noise variance in the path's scaled variables."""
    m, s = sde.kernel(t)
    return (s / m) ** 2


class Weighting(abc.ABC):
    """A weighting of the noise levels: :meth:`value` per unit of :attr:`measure` (module docstring).

    A subclass states ``measure`` (``"t"`` or ``"log_snr"``) and ``needs_kernel`` and implements
    :meth:`value`. :meth:`sample_time`, :meth:`weight` and :meth:`weight_over_variance` are those of
    the weighting drawn from its own :attr:`proposal` (:meth:`drawn_from`)."""

    measure: str = "t"
    needs_kernel: bool = True

    @abc.abstractmethod
    def value(self, sde: SDE, t: Tensor) -> Tensor | float:
        """The weight of the noise-prediction error at the times ``t`` ``(B,)``, per unit of :attr:`measure`."""

    @property
    def proposal(self) -> Proposal:
        """The proposal the weighting's times are drawn from when none is given."""
        return UniformTimeProposal()

    def drawn_from(self, proposal: Proposal | None = None) -> ImportanceSampled:
        """This weighting with times from ``proposal`` (default: its own)."""
        return ImportanceSampled(self, self.proposal if proposal is None else proposal)

    def sample_time(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        return self.drawn_from().sample_time(sde, batch, eps, generator=generator, device=device, dtype=dtype)

    def weight(self, sde: SDE, t: Tensor, eps: float) -> Tensor:
        return self.drawn_from().weight(sde, t, eps)

    def weight_over_variance(self, sde: SDE, t: Tensor, eps: float) -> Tensor | float:
        return self.drawn_from().weight_over_variance(sde, t, eps)


class ImportanceSampled:
    """``weighting`` with times from ``proposal``: each draw weighted so that the per-sample loss is an
    unbiased estimate of the weighting's objective (module docstring)."""

    def __init__(self, weighting: Weighting, proposal: Proposal):
        if not isinstance(weighting, Weighting):
            raise TypeError(
                f"a proposal draws times for a Weighting (a value per unit of t or log-SNR); {weighting!r} is not one, "
                "so it draws its own times: give no proposal"
            )
        if not isinstance(proposal, Proposal):
            raise TypeError(f"proposal must be a sde_diffusion Proposal (UniformTimeProposal, LogNormalProposal, ...), got {proposal!r}")
        self.weighting, self.proposal = weighting, proposal
        self.needs_kernel = weighting.needs_kernel or proposal.needs_kernel

    def sample_time(self, sde: SDE, batch: int, eps: float, *, generator=None, device=None, dtype=None) -> Tensor:
        """``(B,)`` times from the proposal."""
        return self.proposal.sample(sde, batch, eps, generator=generator, device=device, dtype=dtype)

    def weight_over_variance(self, sde: SDE, t: Tensor, eps: float) -> Tensor | float:
        """``F(t)``, the factor of ``|| eps_theta - z ||^2`` in the per-sample loss (a number where constant)."""
        value, importance = self.weighting.value(sde, t), self.proposal.importance(sde, t, eps)
        if self.weighting.measure == self.proposal.measure:
            return value * importance
        speed = log_snr_speed(sde, t)
        return (value * speed if self.weighting.measure == "log_snr" else value / speed) * importance

    def weight(self, sde: SDE, t: Tensor, eps: float) -> Tensor:
        """``lambda(t) = s^2 F(t)``, the factor of the score error ``|| s_theta + z/s ||^2``; a log-SNR
        weighting over uniform-type times gives it as ``w g^2 importance``, without the kernel."""
        if self.weighting.measure == "log_snr" and self.proposal.measure == "t":
            return self.weighting.value(sde, t) * sde.diffusion(t) ** 2 * self.proposal.importance(sde, t, eps)
        return self.weight_over_variance(sde, t, eps) * sde.kernel(t)[1] ** 2

    def __repr__(self) -> str:
        return f"ImportanceSampled({self.weighting!r}, {self.proposal!r})"


class NoiseWeighting(Weighting):
    """``omega = 1`` over uniform ``t``: the eps-prediction loss ``|| s(t) s_theta + z ||^2``, i.e.
    ``lambda(t) = s(t)^2`` (Ho et al. 2020, Eq. 14). Data-prediction weight ``e^lambda``, the SNR.
    ``loss.weighting=eps``."""

    def value(self, sde: SDE, t: Tensor) -> float:
        return 1.0

    def __repr__(self) -> str:
        return "NoiseWeighting()"


class VPredictionWeighting(Weighting):
    """``omega = 1 + e^-lambda`` over uniform ``t``: Salimans & Ho's v-prediction loss (2022, Sec. 4),
    whose error ``v_theta - v = (eps_theta - z) / m`` on a path with ``m^2 + s^2 = 1`` (VP) gives
    ``1 / m^2 = 1 + e^-lambda``; on other paths the same function of the noise level.
    Data-prediction weight ``SNR + 1``. (The flow's velocity is :class:`FlowMatchingWeighting`.)
    ``loss.weighting=velocity``."""

    def value(self, sde: SDE, t: Tensor) -> Tensor:
        return 1.0 + _noise_variance(sde, t)

    def __repr__(self) -> str:
        return "VPredictionWeighting()"


class MinSNRWeighting(Weighting):
    """``omega = min(1, gamma e^-lambda)`` over uniform ``t``: Min-SNR-gamma (Hang et al. 2023, "Efficient
    Diffusion Training via Min-SNR Weighting Strategy", ``gamma = 5``), the data-prediction
    weight ``min(SNR, gamma)``: the eps loss with its low-noise levels, where the data are all but
    seen, weighted down. ``loss.weighting=min_snr``."""

    def __init__(self, gamma: float = 5.0):
        self.gamma = check_range("gamma", gamma, low=0, low_open=True, hint="the SNR above which the weight is capped; Hang et al. use 5")

    def value(self, sde: SDE, t: Tensor) -> Tensor:
        return (self.gamma * _noise_variance(sde, t)).clamp(max=1.0)

    def __repr__(self) -> str:
        return f"MinSNRWeighting(gamma={self.gamma:g})"


class FlowMatchingWeighting(Weighting):
    """``omega = (g^2 / (2 s))^2`` over uniform ``t``, i.e. ``lambda(t) = g(t)^4 / 4``: denoising score
    matching that equals the conditional flow-matching loss ``|| v_theta(x_t, t) - (m'(t) x0 + s'(t) z) ||^2``
    (Lipman et al. 2023, Eq. 9) of the probability-flow velocity ``v_theta = f - g^2 s_theta / 2``.

    Why: at fixed ``x_t = m x0 + s z`` the velocity error is ``v_theta - u = (s' - a s)(eps_theta - z)``
    with ``a = d log m/dt``, ``eps_theta = -s s_theta``, and ``s' - a s = g^2 / (2s)`` (from
    ``g^2 = d s^2/dt - 2 a s^2``), so ``|| v_theta - u ||^2 = (g^2 / (2s))^2 || s s_theta + z ||^2 =
    (g^4 / 4) || s_theta + z / s ||^2``. For rectified flow ``g^2 = 2t / (1 - t)`` and the ratio to
    the eps loss is ``1 / (1 - t)^2``. The one weighting that depends on the path and not on the
    noise level alone. The loss is per sample, exactly the flow-matching value (up to round-off)
    whichever parameterization computes ``s_theta``; :class:`VelocityParameterization` makes the
    network the flow-matching field. ``loss.weighting=flow_matching``.
    """

    def value(self, sde: SDE, t: Tensor) -> Tensor:
        return (sde.diffusion(t) ** 2 / (2.0 * sde.kernel(t)[1])) ** 2

    def __repr__(self) -> str:
        return "FlowMatchingWeighting()"


class LikelihoodWeighting(Weighting):
    """``w = 1`` per unit of log-SNR: over uniform ``t``, ``omega = g^2 / s^2``, i.e. ``lambda(t) = g(t)^2``,
    the loss that bounds the negative log-likelihood (Song, Durkan et al. 2021, Thm. 1; the
    continuous-time VDM bound of Kingma et al. 2021). Needs no kernel drawn over ``t``.
    ``loss.weighting=likelihood``."""

    measure = "log_snr"
    needs_kernel = False

    def value(self, sde: SDE, t: Tensor) -> float:
        return 1.0

    def __repr__(self) -> str:
        return "LikelihoodWeighting()"


class ImportanceLikelihoodWeighting(LikelihoodWeighting):
    """:class:`LikelihoodWeighting` with its times from :class:`~.proposals.UniformLogSNRProposal`,
    ``p(t) ∝ g^2 / s^2``: the same objective, far lower variance (Song, Durkan et al. 2021, Sec. 5);
    each draw weighs ``Z / (T - eps)`` on the eps loss. ``loss=dsm_importance``."""

    needs_kernel = True
    proposal = UniformLogSNRProposal()

    def __repr__(self) -> str:
        return "ImportanceLikelihoodWeighting()"


class DiscreteStepWeighting(NoiseWeighting):
    """:class:`NoiseWeighting` with its times from :class:`~.proposals.DiscreteTimeProposal`: DDPM's simple
    loss ``|| eps - eps_theta(sqrt(abar_i) x0 + sqrt(1 - abar_i) eps, i) ||^2`` with the step ``i``
    uniform in ``{1, ..., T}`` (Ho et al. 2020, Eq. 14 and Alg. 1) on a
    :class:`~sde_diffusion.sdes.DDPMSDE`. ``loss=ddpm_simple``."""

    proposal = DiscreteTimeProposal()

    def __repr__(self) -> str:
        return "DiscreteStepWeighting()"


class SigmoidWeighting(Weighting):
    """``w = sigmoid(bias - lambda)`` per unit of log-SNR (Kingma & Gao 2023): 1 at high noise,
    falling as ``e^(bias - lambda)`` past ``lambda = bias``; monotone in ``lambda``, so the objective is
    an ELBO under Gaussian data augmentation (their main result). ``loss.weighting=sigmoid``."""

    measure = "log_snr"

    def __init__(self, bias: float = 0.0):
        self.bias = check_range("bias", bias, hint="the log-SNR where the weight halves")

    def value(self, sde: SDE, t: Tensor) -> Tensor:
        return torch.sigmoid(self.bias - sde.log_snr(t))

    def __repr__(self) -> str:
        return f"SigmoidWeighting(bias={self.bias:g})"


EDM_P_MEAN, EDM_SIGMA_DATA = -1.2, 0.5
"""Karras et al.'s (2022, Table 1) mean of ``ln sigma`` and the data scale it was chosen for."""


def edm_P_mean(sigma_data: float) -> float:
    """EDM's mean of ``ln sigma`` for data of standard deviation ``sigma_data``:
    ``-1.2 + ln(sigma_data / 0.5)``, the law of ``sigma / sigma_data`` that Karras et al. (2022) used
    for images in ``[-1, 1]`` (``sigma_data = 0.5``, where it is their ``-1.2``)."""
    return EDM_P_MEAN + math.log(sigma_data / EDM_SIGMA_DATA)


class EDMWeighting(Weighting):
    """EDM's objective (Karras et al. 2022, Table 1): noise levels ``ln sigma ~ N(P_mean, P_std^2)`` and
    the weight ``(sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` on the denoiser's error
    ``|| D - x0 ||^2 = sigma^2 || eps_theta - z ||^2``. Per unit of log-SNR (``lambda = -2 ln sigma``):

        w(lambda) = N(lambda; -2 P_mean, (2 P_std)^2) (e^-lambda + sigma_data^2) / sigma_data^2

    (Kingma & Gao 2023, Table 1). Its own proposal is :class:`~.proposals.LogNormalProposal` with the
    same ``P_mean`` and ``P_std``, under which each draw weighs EDM's ``(sigma^2 + sigma_data^2) /
    sigma_data^2`` on the eps loss (times the law's mass on the path's range over ``T - eps``).
    ``sigma_data`` is the data's standard deviation, as in
    :class:`~sde_diffusion.models.EDMPreconditioning`. ``loss=edm``; ``loss.weighting=edm``.

    ``P_mean=None`` (the default) moves EDM's ``-1.2`` with the data's scale,
    ``P_mean = -1.2 + ln(sigma_data / 0.5)`` (:func:`edm_P_mean`): Karras et al. chose ``-1.2`` for
    images in ``[-1, 1]``, ``sigma_data = 0.5``, and scaling the data by ``k`` scales every noise level
    of the same problem by ``k``, so the law of ``sigma / sigma_data`` stays theirs. Their ``-1.2``
    itself on the checkerboard (``sigma_data = 2.31``) puts most draws below the data's scale and
    gave held-out NLL 2.36 nats/dim against 2.02 with the moved mean (2,000 steps, any path;
    ``benchmarks/recipes.py``)."""

    measure = "log_snr"

    def __init__(self, P_mean: float | None = None, P_std: float = 1.2, sigma_data: float = 1.0):
        self.P_std = check_range("P_std", P_std, low=0, low_open=True, hint="the standard deviation of ln sigma; EDM uses 1.2")
        self.sigma_data = check_range(
            "sigma_data", sigma_data, low=0, low_open=True, hint="the data's standard deviation; EDM uses 0.5 for images in [-1, 1]"
        )
        self.P_mean = (
            edm_P_mean(self.sigma_data) if P_mean is None else check_range("P_mean", P_mean, hint="the mean of ln sigma; EDM uses -1.2")
        )

    @property
    def proposal(self) -> Proposal:
        return LogNormalProposal(self.P_mean, self.P_std)

    def value(self, sde: SDE, t: Tensor) -> Tensor:
        t64 = t.to(torch.float64)
        z = (sde.log_snr(t64) + 2.0 * self.P_mean) / (2.0 * self.P_std)
        density = torch.exp(-0.5 * z**2) / (2.0 * self.P_std * math.sqrt(2 * math.pi))
        sd2 = self.sigma_data**2
        return (density * (_noise_variance(sde, t64) + sd2) / sd2).to(t.dtype)

    def __repr__(self) -> str:
        return f"EDMWeighting(P_mean={self.P_mean:g}, P_std={self.P_std:g}, sigma_data={self.sigma_data:g})"
