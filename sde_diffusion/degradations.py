"""Deterministic degradations for cold diffusion (Bansal et al. 2022, "Cold Diffusion"): the forward
process ``x_t = D(x_0, t)`` with no noise, ``t`` in ``[0, 1]``, ``D(x, 0) = x`` exactly and ``D(., 1)``
the most degraded image. Every operator here is linear in ``x``, which the improved sampler's
first-order error cancellation relies on (:func:`~sde_diffusion.samplers.cold_sample`).

Images are ``(B, C, H, W)``; ``t`` is a scalar or ``(B,)`` (one level per image).

- :class:`GaussianBlur`: blur of width ``sigma(t) = t sigma_max`` pixels, with reflecting borders (the
  heat equation with Neumann boundaries, solved exactly in the Fourier basis of the mirrored image).
- :class:`Mask`: a square hole growing from the centre (or a random-order mask), soft-edged, that
  covers the whole image at ``t = 1`` (Bansal et al.'s inpainting degradation).
- :class:`Pixelate`: average-pooling to ``H / 2^k`` and back, interpolated linearly between
  consecutive ``k`` so that ``t`` moves continuously from the image (``k = 0``) to its mean colour.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from ._checks import check_range
from ._shapes import batch_time, expand_like


def _check_images(x: Tensor, who: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{who} degrades images (B, C, H, W), got shape {tuple(x.shape)}")


def _levels(t: Tensor | float, x: Tensor) -> Tensor:
    t = batch_time(t, x)
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError(f"degradation levels t must lie in [0, 1], got values from {float(t.min())} to {float(t.max())}")
    return t


class GaussianBlur:
    """``D(x, t) = G_{sigma(t)} * x``, ``sigma(t) = t sigma_max`` (pixels), reflecting borders.

    Computed exactly as the heat kernel on the image mirrored to ``2H x 2W`` (so the borders reflect):
    its Fourier coefficients are multiplied by ``exp(-sigma^2 |omega|^2 / 2)``, each image with its own
    ``sigma``; ``sigma = 0`` multiplies by 1, so ``D(x, 0) = x`` up to the FFT's round-off (~1e-7 in
    float32). It preserves each image's mean.
    """

    def __init__(self, sigma_max: float = 3.0):
        self.sigma_max = check_range("sigma_max", sigma_max, low=0.0, low_open=True, hint="the blur's largest std, in pixels")

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        _check_images(x, "GaussianBlur")
        sigma = _levels(t, x) * self.sigma_max
        height, width = x.shape[-2:]
        mirrored = torch.cat([x, x.flip(-2)], dim=-2)
        mirrored = torch.cat([mirrored, mirrored.flip(-1)], dim=-1)  # (B, C, 2H, 2W), even about each edge
        wy = 2 * math.pi * torch.fft.fftfreq(2 * height, device=x.device, dtype=x.dtype)
        wx = 2 * math.pi * torch.fft.rfftfreq(2 * width, device=x.device, dtype=x.dtype)
        omega2 = wy[:, None] ** 2 + wx[None, :] ** 2  # (2H, W + 1)
        gain = torch.exp(-0.5 * expand_like(sigma**2, x) * omega2)  # (B, 1, 2H, W + 1)
        blurred = torch.fft.irfft2(torch.fft.rfft2(mirrored) * gain, s=(2 * height, 2 * width))
        return blurred[..., :height, :width]

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma_max={self.sigma_max})"


class Mask:
    """``D(x, t) = m_t * x``: pixels go dark in order of their distance ``d`` from the image centre
    (``order="center"``, a growing square hole) or in a fixed random order (``"random"``), with a soft
    edge ``softness`` (in units of ``d``): ``m_t = 1 - clip((t (d_max + s) - d) / s, 0, 1)``, so
    ``m_0 = 1`` everywhere and ``m_1 = 0`` everywhere."""

    def __init__(self, order: str = "center", softness: float = 1.0, seed: int = 0):
        if order not in ("center", "random"):
            raise ValueError(f"order must be 'center' or 'random', got {order!r}")
        self.softness = check_range("softness", softness, low=0.0, low_open=True)
        self.order, self.seed = order, check_range("seed", seed, low=0, integer=True)

    def _distance(self, height: int, width: int, device, dtype) -> Tensor:
        if self.order == "random":
            g = torch.Generator().manual_seed(self.seed)
            return torch.randperm(height * width, generator=g).reshape(height, width).to(device=device, dtype=dtype)
        y = torch.arange(height, device=device, dtype=dtype) - (height - 1) / 2
        x = torch.arange(width, device=device, dtype=dtype) - (width - 1) / 2
        return torch.maximum(y.abs()[:, None], x.abs()[None, :])  # Chebyshev: square rings

    def mask(self, t: Tensor, height: int, width: int, dtype=torch.float32, device=None) -> Tensor:
        """``m_t`` ``(B, 1, H, W)`` in ``[0, 1]`` for levels ``t`` ``(B,)``."""
        d = self._distance(height, width, device, dtype)
        s = self.softness
        covered = ((t.to(dtype)[:, None, None] * (float(d.max()) + s) - d[None]) / s).clamp(0, 1)
        return (1 - covered)[:, None]

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        _check_images(x, "Mask")
        return self.mask(_levels(t, x), x.shape[-2], x.shape[-1], x.dtype, x.device) * x

    def __repr__(self) -> str:
        return f"Mask(order={self.order!r}, softness={self.softness})"


class Pixelate:
    """``D(x, t) = (1 - a) P_k x + a P_{k+1} x`` with ``u = t L``, ``k = floor(u)``, ``a = u - k``:
    ``P_k`` average-pools ``2^k x 2^k`` blocks and repeats them back to ``H x W`` (``P_0 = I``), and
    ``L = log2(min(H, W))`` levels take the image to its mean colour at ``t = 1``. H and W must be
    divisible by ``2^L`` (powers of two, e.g. 8 or 32)."""

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        _check_images(x, "Pixelate")
        t = _levels(t, x)
        height, width = x.shape[-2:]
        n_levels = int(math.log2(min(height, width)))
        if height % 2**n_levels or width % 2**n_levels:
            raise ValueError(f"Pixelate needs H and W divisible by 2^{n_levels}, got {height}x{width}")
        pyramid = [x]  # P_0 x .. P_L x, each (B, C, H, W)
        for k in range(1, n_levels + 1):
            pooled = F.avg_pool2d(x, 2**k)
            pyramid.append(pooled.repeat_interleave(2**k, dim=-2).repeat_interleave(2**k, dim=-1))
        stack = torch.stack(pyramid)  # (L + 1, B, C, H, W)
        u = t * n_levels
        level = u.floor().long().clamp(max=n_levels - 1)
        a = expand_like(u - level.to(u.dtype), x)
        rows = torch.arange(x.shape[0], device=x.device)
        return (1 - a) * stack[level, rows] + a * stack[level + 1, rows]

    def __repr__(self) -> str:
        return "Pixelate()"


DEGRADATIONS = {"blur": GaussianBlur, "mask": Mask, "pixelate": Pixelate}
"""The degradations by the names ``experiment=digits_cold degradation=...`` uses."""
