"""Image quality against a reference, per image: PSNR and SSIM (for super-resolution and restoration).

Both take ``x`` and ``ref`` ``(B, C, H, W)`` and return ``(B,)``, with ``data_range`` the span of
the values (2 for images on ``[-1, 1)``). Channels are averaged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_range
from .conditioning import bicubic_upsample, downsample

PSNR_CAP = 100.0
"""dB: the PSNR an exact copy counts as in :func:`super_resolution_scores` (MSE = 1e-10 of the range squared)."""


def _check_pair(x: Tensor, ref: Tensor, what: str) -> None:
    if x.dim() != 4 or x.shape != ref.shape:
        raise ValueError(f"{what} needs two image batches (B, C, H, W) of one shape, got {tuple(x.shape)} and {tuple(ref.shape)}")


def psnr(x: Tensor, ref: Tensor, data_range: float) -> Tensor:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB of each image ``(B,)``, the
    MSE over its pixels and channels (infinite for an exact copy)."""
    _check_pair(x, ref, "psnr")
    data_range = check_range("data_range", data_range, low=0, low_open=True)
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def ssim(x: Tensor, ref: Tensor, data_range: float, win_size: int | None = None) -> Tensor:
    """Structural similarity (Wang et al. 2004, Eq. 13) of each image ``(B,)``, as scikit-image
    computes it by default: local means, variances and covariance over ``win_size x win_size``
    uniform windows at every position where the window fits (no padding), sample (co)variances
    (``N / (N - 1)``), ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L = data_range``, the map averaged
    over positions and channels. 1 for identical images. ``win_size`` (odd, at most H and W; default
    7, or the largest odd size that fits smaller images): an 8x8 digit has 2x2 positions of a 7x7
    window."""
    _check_pair(x, ref, "ssim")
    data_range = check_range("data_range", data_range, low=0, low_open=True)
    if win_size is None:
        fits = min(7, *x.shape[-2:])
        win_size = fits - (1 - fits % 2)
    win_size = check_range("win_size", win_size, low=3, integer=True, hint="SSIM needs images of at least 3x3")
    if win_size % 2 == 0 or win_size > min(x.shape[-2:]):
        raise ValueError(f"win_size must be odd and at most the image size {tuple(x.shape[-2:])}, got {win_size}")
    a, b = x.double(), ref.double()
    c = a.shape[1]
    flat = lambda v: v.reshape(-1, 1, *v.shape[-2:])  # noqa: E731 (channels as images)
    mean = lambda v: F.avg_pool2d(flat(v), win_size, stride=1)  # noqa: E731
    n = win_size**2
    mu_a, mu_b = mean(a), mean(b)
    var_a = (mean(a * a) - mu_a**2) * n / (n - 1)
    var_b = (mean(b * b) - mu_b**2) * n / (n - 1)
    cov = (mean(a * b) - mu_a * mu_b) * n / (n - 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.reshape(x.shape[0], c, -1).mean((1, 2))


def super_resolution_scores(sr: Tensor, truth: Tensor, low: Tensor, factor: int, data_range: float) -> dict:
    """PSNR and SSIM (means over images, with the s.e. of the PSNR) of super-resolved images ``sr``
    against ``truth`` ``(N, C, H, W)``, beside bicubic upsampling of ``low``, and the RMS consistency
    error ``|A sr - low|`` of the downsampling operator ``A``. An exact copy's PSNR counts as
    :data:`PSNR_CAP` dB, so that the mean and its s.e. stay finite."""
    bicubic = bicubic_upsample(low, (truth.shape[-2], truth.shape[-1]))
    out = {}
    for name, x in (("super_resolved", sr), ("bicubic", bicubic)):
        p = psnr(x, truth, data_range).clamp(max=PSNR_CAP)
        out[name] = {
            "psnr": float(p.mean()),
            "psnr_stderr": float(p.std() / math.sqrt(p.numel())),
            "ssim": float(ssim(x, truth, data_range).mean()),
            "consistency_rms": float((downsample(x, factor) - low).pow(2).mean().sqrt()),
        }
    return out
