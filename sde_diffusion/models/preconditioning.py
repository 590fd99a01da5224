"""EDM's preconditioning for any Gaussian path (Karras et al. 2022, Sec. 5, Table 1 and Eq. 7), and
the data's scale it needs, ``sigma_data``, estimated from training data.

The path's kernel ``x_t = m(t) x0 + s(t) eps`` is, in its scaled variables ``y = x_t / m`` and
``sigma = s / m``, EDM's ``y = x0 + sigma eps``; the preconditioning is stated in ``sigma`` alone, so
every path with a kernel (VP, sub-VP, VE, cosine, EDM, rectified flow, DDPM, a user's
:class:`~sde_diffusion.GaussianPathSDE`) gets the same recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .._checks import check_range
from .._shapes import batch_time
from .parameterizations import _Parameterization, split_variance

if TYPE_CHECKING:
    from ..conditioning import Conditioning
    from ..sdes.base import SDE

_CHUNK = 1 << 22


def estimate_sigma_data(x: Tensor) -> float:
    """EDM's ``sigma_data``: the standard deviation of the data ``x`` ``(N, *dims)`` over all its
    values at once (Karras et al. 2022, Sec. 5: 0.5 for images in [-1, 1]), in float64 by chunks,
    so the same data always give the same number."""
    values = x.detach().reshape(-1)
    if values.numel() < 2:
        raise ValueError(f"sigma_data is estimated from at least 2 values, got {values.numel()}")
    chunks = values.split(_CHUNK)
    mean = sum(c.double().sum() for c in chunks) / values.numel()
    var = sum(((c.double() - mean) ** 2).sum() for c in chunks) / (values.numel() - 1)
    return float(torch.as_tensor(var).sqrt())


class EDMPreconditioning(_Parameterization):
    """EDM's preconditioned denoiser (Karras et al. 2022, Table 1 and Eq. 7) on any Gaussian path.

    With ``sigma = s/m`` and ``y = x/m``, the network ``F`` gives the denoiser

        D(y, sigma) = c_skip y + c_out F(c_in y, c_noise),
        c_skip = sd^2 / (sigma^2 + sd^2),   c_out = sigma sd / sqrt(sigma^2 + sd^2),
        c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = log(sigma) / 4,

    with ``sd = sigma_data``, the data's standard deviation: on data of that scale the network's input
    ``c_in y`` and its training target ``(x0 - c_skip y) / c_out`` have unit variance at every noise
    level, and ``D -> y`` as ``sigma -> 0`` without the network learning the identity. ``D``
    estimates ``E[x0 | x_t]``; the score ``(m D - x) / s^2``, the noise and the velocity follow
    through the path (:meth:`~sde_diffusion.sdes.SDE.score_from_x0`). The network's time input is
    ``c_noise``, not ``t``.

    ``learn_variance=True`` takes a network with twice the channels of ``x`` (``learn_variance`` of
    :class:`~sde_diffusion.models.TimeMLP` and :class:`~sde_diffusion.models.UNet`): the first half
    is ``F``, the second the variance interpolation of
    :class:`~sde_diffusion.models.LearnedVarianceParameterization`, left as the network gives it, and
    ``forward(..., variance=True)`` returns ``(score, v)`` as that class does.

    ``sigma_data`` is a buffer, so a checkpoint holds it and loading one restores the value trained
    with; a checkpoint without it (written before it was stored) keeps the value given here.
    """

    sigma_data: Tensor  # a registered buffer, float64, ()

    def __init__(self, net: nn.Module, sde: SDE, sigma_data: float = 1.0, learn_variance: bool = False):
        super().__init__(net, sde)
        sd = check_range(
            "sigma_data", sigma_data, low=0, low_open=True, hint="the data's standard deviation; EDM uses 0.5 for images in [-1, 1]"
        )
        self.register_buffer("sigma_data", torch.tensor(sd, dtype=torch.float64))
        self.learns_variance = bool(learn_variance)
        self.register_load_state_dict_pre_hook(_keep_sigma_data)

    def extra_repr(self) -> str:
        return f"sigma_data={float(self.sigma_data):.6g}, learn_variance={self.learns_variance}"

    def coefficients(self, m: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` of Table 1 at the kernel ``(m, s)`` of ``x_t``, i.e. at
        noise level ``sigma = s/m`` (``m = 1`` for a noise level alone); tensors of ``s``'s shape."""
        sigma = s / m
        sd, sd2 = self.sigma_data.to(s), (self.sigma_data**2).to(s)
        c_in = (sigma**2 + sd2).rsqrt()
        return sd2 / (sigma**2 + sd2), sigma * sd * c_in, c_in, (torch.log(s) - torch.log(m)) / 4

    def _denoise(self, x: Tensor, t: Tensor, y: Tensor | None, cond: Conditioning | None) -> tuple[Tensor, Tensor | None]:
        """``(D, v)``: the denoiser and, with ``learn_variance``, the variance interpolation, else None."""
        m, s = self._kernel(x, t)
        c_skip, c_out, c_in, c_noise = self.coefficients(m, s)
        scaled = x / m
        out = self._net(c_in * scaled, c_noise.reshape(x.shape[0]), y, cond)
        f, v = split_variance(out, x, type(self).__name__) if self.learns_variance else (out, None)
        return c_skip * scaled + c_out * f, v

    def denoise(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        """``D``, the estimate of ``E[x0 | x_t = x]`` at time ``t``, shape ``(B, *dims)``."""
        return self._denoise(x, batch_time(t, x), y, cond)[0]

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None, *, variance: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The score ``(B, *dims)``; with ``variance=True`` (``learn_variance`` only) ``(score, v)``."""
        if variance and not self.learns_variance:
            raise TypeError("EDMPreconditioning(learn_variance=False) has no variance output")
        t = batch_time(t, x)
        denoised, v = self._denoise(x, t, y, cond)
        score = self.sde.score_from_x0(x, denoised, t)
        return (score, v) if variance and v is not None else score


def _keep_sigma_data(module: EDMPreconditioning, state_dict: dict, prefix: str, *args) -> None:
    """A checkpoint written before ``sigma_data`` was a buffer (``model=mlp_edm`` runs) lacks it:
    it was trained with the configured value, which the module holds."""
    state_dict.setdefault(prefix + "sigma_data", module.sigma_data)
