"""Parameterization wrappers: what a raw network ``net(x, t)`` predicts, turned into the one
contract of every sampler, loss and likelihood, ``score(x, t)``.

The network predicts the score, the noise eps, the clean data x0, Salimans & Ho's ``v``, EDM's
preconditioned denoiser, or the probability-flow velocity of flow matching; each wrapper turns its
output into a score with the SDE's own conversion (:meth:`~sde_diffusion.sdes.SDE.score_from_eps`,
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

import torch
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
        out = self._net(x, t, y, cond)
        if out.shape[0] != x.shape[0] or out.shape[1] != 2 * x.shape[1] or out.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"LearnedVarianceParameterization needs a network with twice the channels of x (learn_variance=true, "
                f"e.g. model=unet_learned_variance); got output {tuple(out.shape)} for input {tuple(x.shape)}"
            )
        eps, r = out.chunk(2, dim=1)
        score = self.sde.score_from_eps(eps, t)
        return (score, (r + 1) / 2) if variance else score


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


class EDMPreconditioning(_Parameterization):
    """EDM's preconditioned denoiser for any Gaussian path (Karras et al. 2022, Sec. 5 and Table 1).

    In the path's scaled variables, noise level ``sigma = s/m`` and ``y = x/m`` (so ``y = x0 + sigma z``),
    the network ``F`` gives the denoiser

        D(y, sigma) = c_skip y + c_out F(c_in y, c_noise),
        c_skip = sd^2 / (sigma^2 + sd^2),   c_out = sigma sd / sqrt(sigma^2 + sd^2),
        c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = log(sigma) / 4,

    with ``sd = sigma_data``, the data's standard deviation: the network's input and its training
    target have unit variance at every noise level, and ``D -> y`` as ``sigma -> 0`` without the
    network having to learn the identity. ``D`` estimates ``E[x0 | x_t]``, so
    ``score = (m D - x) / s^2``. The network's time input is ``c_noise``, not ``t``.
    """

    def __init__(self, net: nn.Module, sde: SDE, sigma_data: float = 1.0):
        super().__init__(net, sde)
        if not float(sigma_data) > 0:
            raise ValueError(
                f"sigma_data must be > 0 (the data's standard deviation; EDM uses 0.5 for images in [-1, 1]), got {sigma_data}"
            )
        self.sigma_data = float(sigma_data)

    def denoise(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        """``D``, the estimate of ``x0`` given ``x_t = x`` at time ``t``, shape ``(B, *dims)``."""
        t = batch_time(t, x)
        m, s = self._kernel(x, t)
        sigma, sd2 = s / m, self.sigma_data**2
        scaled = x / m
        c_in, c_skip = (sigma**2 + sd2).rsqrt(), sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data * c_in
        c_noise = (torch.log(s) - torch.log(m)).reshape(x.shape[0]) / 4
        return c_skip * scaled + c_out * self._net(c_in * scaled, c_noise, y, cond)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        t = batch_time(t, x)
        return self.sde.score_from_x0(x, self.denoise(x, t, y, cond), t)


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
