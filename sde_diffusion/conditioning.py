"""Conditioning a score model on an image: super-resolution (SR3, Saharia et al. 2021) and cascades
with noise-conditioning augmentation (Ho et al. 2022, "Cascaded Diffusion Models", Sec. 3.2 and 4.2).

- :func:`downsample`: the linear operator ``A`` of super-resolution, ``factor x factor`` average
  pooling ``(B, C, H, W) -> (B, C, H / f, W / f)``; :func:`bicubic_upsample`, the baseline.
- :class:`Conditioning`: what a conditioned network receives besides ``(x, t, y)``: the conditioning
  image (any size: the U-Net resizes it) and its noise-augmentation level ``(B,)``.
- :class:`SuperResolution`: makes the conditioning from clean data in training (``A x_0``, corrupted
  by ``N(0, a^2)`` with ``a ~ U(0, max_level)`` per sample, ``a`` given to the network) and from a
  given low-resolution image at sampling time (a fixed level ``sample_level``). ``max_level = 0``
  draws no noise and is exactly no augmentation.
- :class:`ConditionedScore`: a conditioned model with its conditioning bound, a plain
  ``score(x, t)`` for every sampler.

The augmentation here adds ``a`` times standard noise to the conditioning image (the level ``a`` is
its standard deviation in data units); Ho et al. corrupt it with their diffusion's own forward
process at a random time, which for small levels is the same up to a scale of the image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_range
from ._noise import NoiseSource, randn
from ._shapes import batch_time


class Conditioning(NamedTuple):
    """The conditioning of a batch: ``image`` ``(B, C_c, h, w)`` and ``level`` ``(B,)``, the standard
    deviation of the Gaussian noise already added to it (0: clean)."""

    image: Tensor
    level: Tensor


def _check_images(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what} must be images (B, C, H, W), got {shape}")


def downsample(x: Tensor, factor: int) -> Tensor:
    """``factor x factor`` average pooling, ``(B, C, H, W) -> (B, C, H / factor, W / factor)``: a
    linear operator (each low-resolution pixel is the mean of its block), SR3's and most
    super-resolution benchmarks' degradation up to the choice of filter. ``H`` and ``W`` must be
    divisible by ``factor``."""
    _check_images(x, "downsample's input")
    factor = int(check_range("super-resolution factor", factor, low=1, integer=True))
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"downsampling by {factor} needs H and W divisible by {factor}, got {tuple(x.shape[-2:])}; crop or pad the images")
    return F.avg_pool2d(x, factor) if factor > 1 else x


def bicubic_upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic interpolation of ``(B, C, h, w)`` to ``(B, C, *size)`` (Keys' kernel, a = -0.75, as
    PyTorch): the usual baseline of super-resolution."""
    _check_images(x, "bicubic_upsample's input")
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False)


class SuperResolution:
    """The conditioning of a super-resolution model: the low-resolution image ``A x_0``.

    Args:
        factor: the downsampling factor of :func:`downsample` (2: 8x8 digits from 4x4).
        max_level: training draws the augmentation level ``a ~ U(0, max_level)`` per sample and
            conditions on ``A x_0 + a n``, ``n ~ N(0, I)`` (noise-conditioning augmentation, Ho et al.
            2022, Sec. 4.2). 0: no augmentation (no noise drawn).
        sample_level: the fixed level at sampling time, in ``[0, max_level]``: the given
            low-resolution image is corrupted by ``sample_level`` noise and the network told so.
    """

    def __init__(self, factor: int = 2, max_level: float = 0.0, sample_level: float = 0.0):
        self.factor = int(check_range("super-resolution factor", factor, low=1, integer=True, hint="2: 4x4 -> 8x8"))
        self.max_level = check_range("conditioning.max_level", max_level, low=0, hint="0: no noise-conditioning augmentation")
        self.sample_level = check_range(
            "conditioning.sample_level", sample_level, low=0, high=self.max_level, hint="within training's levels"
        )

    def training(self, x0: Tensor, generator: torch.Generator | None = None) -> Conditioning:
        """The conditioning of clean training images ``x0`` ``(B, C, H, W)``, with the augmentation
        noise drawn from ``generator`` (nothing is drawn when ``max_level = 0``)."""
        low = downsample(x0, self.factor)
        if self.max_level == 0.0:
            return Conditioning(low, torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device))
        level = self.max_level * torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
        noise = torch.randn(low.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return Conditioning(low + level[:, None, None, None] * noise, level)

    def sampling(self, low: Tensor, generator: NoiseSource = None) -> Conditioning:
        """The conditioning for generating from given low-resolution images ``low`` ``(B, C, h, w)``:
        corrupted at the fixed ``sample_level`` with noise from ``generator`` (a torch generator or
        per-sample noise; nothing is drawn when the level is 0)."""
        _check_images(low, "the low-resolution images")
        level = torch.full((low.shape[0],), self.sample_level, dtype=low.dtype, device=low.device)
        if self.sample_level == 0.0:
            return Conditioning(low, level)
        return Conditioning(low + self.sample_level * randn(low.shape, generator, dtype=low.dtype, device=low.device), level)

    def output_shape(self, low_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(C, H, W)`` of the high-resolution images for low-resolution images ``(C, h, w)``."""
        c, h, w = low_shape
        return (c, h * self.factor, w * self.factor)

    def __repr__(self) -> str:
        return f"SuperResolution(factor={self.factor}, max_level={self.max_level:g}, sample_level={self.sample_level:g})"


class ConditionedScore:
    """``score(x, t) = model(x, t, cond=cond)`` for a fixed :class:`Conditioning` of a batch of ``B``.

    Args:
        model: a conditioned score model, ``model(x, t, y, cond=...)`` (a parameterization wrapping
            a :class:`~sde_diffusion.models.UNet` built with ``cond_channels``).
        cond: the conditioning of exactly the batch the samplers draw (``B`` rows).
        labels: optional class labels ``(B,)`` int64 for a class-conditional model as well.
    """

    def __init__(self, model: Callable[..., Tensor], cond: Conditioning, labels: Tensor | None = None):
        if not isinstance(cond, Conditioning):
            raise TypeError(f"cond must be a Conditioning(image, level), got {type(cond).__name__}")
        self.model, self.cond, self.labels = model, cond, labels
        self.n_classes = None  # the bound model is no longer class-guidable

    @overload
    def __call__(self, x: Tensor, t: Tensor, variance: Literal[False] = False) -> Tensor: ...
    @overload
    def __call__(self, x: Tensor, t: Tensor, variance: Literal[True]) -> tuple[Tensor, Tensor]: ...
    def __call__(self, x: Tensor, t: Tensor, variance: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``x``: ``(B, *dims)`` with ``B`` the conditioning's batch; returns the score ``(B, *dims)``
        (with ``variance=True`` also the model's variance interpolation)."""
        if x.shape[0] != self.cond.image.shape[0]:
            raise ValueError(
                f"ConditionedScore holds conditioning for {self.cond.image.shape[0]} samples but got a batch of "
                f"{x.shape[0]}; draw exactly one sample per conditioning image (batch_size = their number)"
            )
        extra = {"variance": True} if variance else {}
        return self.model(x, batch_time(t, x), self.labels, cond=self.cond, **extra)

    def __repr__(self) -> str:
        return f"ConditionedScore(<{self.cond.image.shape[0]} conditioning images>)"
