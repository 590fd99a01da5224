"""Parameterization wrappers: turn a raw network ``net(x, t)`` into a score ``score(x, t)``.

Samplers, losses and the likelihood only see ``score(x, t) = grad_x log p_t(x)``; what the network
predicts (the score, the noise eps, the clean data x0, Salimans & Ho's v, or the probability-flow
velocity of flow matching) is a choice made here, using the SDE's perturbation kernel
``x_t = m(t) x_0 + s(t) eps``: ``eps = -s * score``, ``x0 = (x_t + s^2 score) / m``.

Class-conditional networks ``net(x, t, y)`` (e.g. :class:`~sde_diffusion.models.UNet` with
``n_classes``) pass through unchanged: ``forward(x, t, y)`` hands the ``(B,)`` int64 labels ``y`` to
the network, and ``forward(x, t)`` calls ``net(x, t)`` as before (the null label for a conditional
network), so the wrapped model is still a plain ``score(x, t)`` for samplers and the likelihood.
"""

from __future__ import annotations

from torch import Tensor, nn

from .._shapes import batch_time, expand_like
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

    def _net(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        """``net(x, t)`` without labels (so networks without a ``y`` argument work), else ``net(x, t, y)``."""
        return self.net(x, t) if y is None else self.net(x, t, y)

    def _kernel(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.sde.kernel(t)
        return expand_like(m, x), expand_like(s, x)


class ScoreParameterization(_Parameterization):
    """The network predicts the score directly: ``score = net(x, t)``."""

    needs_kernel = False

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self._net(x, batch_time(t, x), y)


class EpsilonParameterization(_Parameterization):
    """The network predicts the noise: ``score = -net(x, t) / s(t)`` (Ho et al. 2020; Song et al. 2021)."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = batch_time(t, x)
        _, s = self._kernel(x, t)
        return self._net(x, t, y) / -s  # negate the (B, 1, ...) std, not the network's output


class DataParameterization(_Parameterization):
    """The network predicts the clean data: ``score = -(x - m(t) x0_hat) / s(t)^2`` (x0-prediction)."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = batch_time(t, x)
        m, s = self._kernel(x, t)
        return (m * self._net(x, t, y) - x) / s**2


class VPredictionParameterization(_Parameterization):
    """The network predicts ``v = m(t) eps - s(t) x0`` (Salimans & Ho 2022, Sec. 4, written for any
    kernel; with ``m^2 + s^2 = 1`` it is their ``alpha eps - sigma x``). Inverting
    ``[x_t; v] = [[m, s], [-s, m]] [x0; eps]``: ``eps = (s x_t + m v) / (m^2 + s^2)``, so
    ``score = -eps / s = -(s x_t + m v) / (s (m^2 + s^2))``."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = batch_time(t, x)
        m, s = self._kernel(x, t)
        return -(s * x + m * self._net(x, t, y)) / (s * (m**2 + s**2))


class VelocityParameterization(_Parameterization):
    """The network predicts the probability-flow velocity ``v(x, t) = f(x, t) - g(t)^2 score / 2``
    (Song et al. 2021, Eq. 13), which for a Gaussian path is the flow-matching vector field
    ``E[m'(t) x0 + s'(t) eps | x_t]`` (Lipman et al. 2023, Eq. 8; for rectified flow ``E[eps - x0 | x_t]``).
    Hence ``score = 2 (f(x, t) - v) / g(t)^2``, which needs only the SDE's drift and diffusion
    (times with ``g(t) > 0``, i.e. ``t > 0``)."""

    needs_kernel = False

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = batch_time(t, x)
        g2 = expand_like(self.sde.diffusion(t) ** 2, x)
        return 2.0 * (self.sde.drift(x, t) - self._net(x, t, y)) / g2
