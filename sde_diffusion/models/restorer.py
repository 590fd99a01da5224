"""The network of a cold diffusion run: a restorer ``R(x_t, t) ~ x_0`` (Bansal et al. 2022)."""

from __future__ import annotations

from torch import Tensor, nn


class Restorer(nn.Module):
    """Wraps a raw image network ``net(x, t)`` whose output is the restored image ``x0_hat`` (the
    shape of ``x``). ``is_restorer`` marks a cold diffusion run for the apps."""

    is_restorer = True

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t)


def as_restorer(net: nn.Module, sde=None) -> Restorer:
    """The ``model.parameterization`` of a cold diffusion run (the SDE plays no part)."""
    return Restorer(net)
