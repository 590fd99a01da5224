"""Parameterization wrappers: what a raw network ``net(x, t)`` predicts, turned into the one
contract of every sampler, loss and likelihood, ``score(x, t)``.

The network predicts the score, the noise eps, the clean data x0, Salimans & Ho's ``v``, or the
probability-flow velocity of flow matching (EDM's preconditioned denoiser, for any path, is
:class:`~sde_diffusion.models.preconditioning.EDMPreconditioning`); each wrapper turns its output
into a score with the SDE's own conversion (:meth:`~sde_diffusion.sdes.SDE.score_from_eps`,
:meth:`~sde_diffusion.sdes.SDE.score_from_x0`, :meth:`~sde_diffusion.sdes.SDE.score_from_v`,
:meth:`~sde_diffusion.sdes.SDE.score_from_velocity`), derived from the perturbation kernel
``x_t = m(t) x_0 + s(t) eps`` or from the drift and diffusion. Class-conditional networks
``net(x, t, y)`` (e.g. :class:`~sde_diffusion.models.UNet` with ``n_classes``) pass through:
``forward(x, t, y)`` hands the ``(B,)`` int64 labels to the network, ``forward(x, t)`` calls
``net(x, t)`` (the null label for a conditional network), so a wrapped model is still a plain
``score(x, t)``. Image-conditioned networks take ``cond=`` (a
:class:`~sde_diffusion.conditioning.Conditioning`) the same way.

This module depends on no SDE class: wrappers call the SDE's methods and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from .._shapes import batch_time, expand_like

if TYPE_CHECKING:
    from ..conditioning import Conditioning
    from ..sdes.base import SDE


class _Parameterization(nn.Module):
    """Common part: holds the raw network and the SDE; ``forward(x, t, y=None)`` returns the score."""

    needs_kernel = True

    def __init__(self, net: nn.Module, sde: SDE):
        super().__init__()
        if self.needs_kernel and not sde.has_kernel:
            raise ValueError(
                f"{type(self).__name__} needs the SDE's perturbation kernel, which "
                f"{type(sde).__name__} does not define; use ScoreParameterization instead"
            )
        self.net = net
        self.sde = sde

    @property
    def n_classes(self) -> int | None:
        """The network's number of classes ``K`` (labels ``0 .. K - 1``, null label ``K``), or None
        for an unconditional network."""
        return getattr(self.net, "n_classes", None)

    def _net(self, x: Tensor, t: Tensor, y: Tensor | None, cond: Conditioning | None = None) -> Tensor:
        """``net(x, t)`` without labels (so networks without a ``y`` argument work), else ``net(x, t, y)``;
        a conditioning image and level ``cond`` (image-conditioned networks) go as ``cond=``."""
        extra = {} if cond is None else {"cond": cond}
        return self.net(x, t, **extra) if y is None else self.net(x, t, y, **extra)

    def _kernel(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.sde.kernel(t)
        return expand_like(m, x), expand_like(s, x)


class ScoreParameterization(_Parameterization):
    """The network predicts the score directly: ``score = net(x, t)``."""

    needs_kernel = False

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        return self._net(x, batch_time(t, x), y, cond)


class EpsilonParameterization(_Parameterization):
    """The network predicts the noise: ``score = -net(x, t) / s(t)`` (Ho et al. 2020; Song et al. 2021)."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        t = batch_time(t, x)
        return self.sde.score_from_eps(self._net(x, t, y, cond), t)


class LearnedVarianceParameterization(_Parameterization):
    """The network predicts the noise and a variance interpolation (Nichol & Dhariwal 2021, Sec. 3.1):
    its output has twice the channels of ``x`` (``learn_variance=True`` on
    :class:`~sde_diffusion.models.TimeMLP` and :class:`~sde_diffusion.models.UNet`); the first half
    ``eps_theta`` gives ``score = -eps_theta / s(t)`` as :class:`EpsilonParameterization`, the second
    ``r`` the interpolation ``v = (r + 1) / 2`` (iDDPM's convention: a zero-initialised output starts
    half way) of a reverse step's log-variance, ``log Sigma = v log beta + (1 - v) log beta_tilde``
    (Eq. 15), used by the DDPM sampler, the hybrid loss and the discrete VLB.

    ``forward(x, t, y)`` is the score, so every sampler and loss takes the model as it is;
    ``forward(x, t, y, variance=True)`` returns ``(score, v)``, both ``(B, *dims)``.
    """

    learns_variance = True

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, variance: bool = False, cond: Conditioning | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        t = batch_time(t, x)
        eps, v = split_variance(self._net(x, t, y, cond), x, type(self).__name__)
        score = self.sde.score_from_eps(eps, t)
        return (score, v) if variance else score


def split_variance(out: Tensor, x: Tensor, who: str) -> tuple[Tensor, Tensor]:
    """A learned-variance network's output ``out`` ``(B, 2 C, *rest)`` for ``x`` ``(B, C, *rest)``
    split into its prediction and the variance interpolation ``v = (r + 1) / 2`` of its second half
    (iDDPM's convention, Nichol & Dhariwal 2021, Eq. 15); ``who`` names the wrapper in the error."""
    if out.shape[0] != x.shape[0] or out.shape[1] != 2 * x.shape[1] or out.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"{who} needs a network with twice the channels of x (learn_variance=true, "
            f"e.g. model=unet_learned_variance); got output {tuple(out.shape)} for input {tuple(x.shape)}"
        )
    prediction, r = out.chunk(2, dim=1)
    return prediction, (r + 1) / 2


class DataParameterization(_Parameterization):
    """The network predicts the clean data: ``score = -(x - m(t) x0_hat) / s(t)^2`` (x0-prediction)."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        t = batch_time(t, x)
        return self.sde.score_from_x0(x, self._net(x, t, y, cond), t)


class VPredictionParameterization(_Parameterization):
    """The network predicts ``v = m(t) eps - s(t) x0`` (Salimans & Ho 2022, Sec. 4, written for any
    kernel; with ``m^2 + s^2 = 1`` it is their ``alpha eps - sigma x``). Inverting
    ``[x_t; v] = [[m, s], [-s, m]] [x0; eps]``: ``eps = (s x_t + m v) / (m^2 + s^2)``, so
    ``score = -eps / s = -(s x_t + m v) / (s (m^2 + s^2))`` (:meth:`~sde_diffusion.sdes.SDE.score_from_v`)."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        t = batch_time(t, x)
        return self.sde.score_from_v(x, self._net(x, t, y, cond), t)


class VelocityParameterization(_Parameterization):
    """The network predicts the probability-flow velocity ``v(x, t) = f(x, t) - g(t)^2 score / 2``
    (Song et al. 2021, Eq. 13), which for a Gaussian path is the flow-matching vector field
    ``E[m'(t) x0 + s'(t) eps | x_t]`` (Lipman et al. 2023, Eq. 8; for rectified flow ``E[eps - x0 | x_t]``).
    Hence ``score = 2 (f(x, t) - v) / g(t)^2``, which needs only the SDE's drift and diffusion
    (times with ``g(t) > 0``, i.e. ``t > 0``)."""

    needs_kernel = False

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        t = batch_time(t, x)
        return self.sde.score_from_velocity(x, self._net(x, t, y, cond), t)
