"""A small KL-regularised convolutional autoencoder for latent diffusion (Rombach et al. 2022, Sec. 3
and App. G, the "KL-f" autoencoders; a VAE, Kingma & Welling 2014).

The encoder gives a diagonal Gaussian ``q(z | x) = N(mu(x), diag sigma(x)^2)`` over latents of shape
``(latent_channels, H / f, W / f)``, ``f = 2**(len(channel_mult) - 1)``; the decoder gives the mean
of ``p(x | z)``, a Gaussian with one learned log-variance per channel, discretized to the data's
``K`` levels for discrete data (``losses.vlb.discretized_gaussian_log_prob``), so that
``-log p(x | z)`` is a number of nats of the discrete data and every bound built on it (the VAE's
ELBO, LSGM's bound with a score prior) is a bound on ``-log P(x)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_range
from .blocks import ResBlock, Upsample, conv3x3, group_norm


def _check_positive(name: str, value) -> int:
    return check_range(f"Autoencoder {name}", value, low=1, integer=True)


class Autoencoder(nn.Module):
    """Encoder ``x (B, C, H, W) -> (mu, log_var)`` of ``q(z | x)``, each ``(B, latent_channels, H / f, W / f)``;
    decoder ``z -> (mean, log_var)`` of ``p(x | z)``, ``(B, C, H, W)`` and ``(C,)``.

    Each level holds ``n_res_blocks`` residual blocks (the U-Net's, without an embedding) at
    ``channels * channel_mult[l]`` channels; levels after the first halve (encoder: stride-2
    convolution) or double (decoder: nearest upsampling and a convolution) the resolution.

    Args:
        data_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``f``.
        channels, channel_mult, n_res_blocks: the widths and depth (32, ``[1, 2]``, 1: 8x8 digits to
            4x4 latents).
        latent_channels: channels of the latent (2: the digits' 64 pixels become 32 latent dimensions).
        init_log_var: the decoder's initial log-variance (per channel, learned).
    """

    is_autoencoder = True

    def __init__(
        self,
        data_shape: Sequence[int],
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        n_res_blocks: int = 1,
        latent_channels: int = 2,
        init_log_var: float = -4.0,
    ):
        super().__init__()
        data_shape = tuple(int(d) for d in data_shape)
        if len(data_shape) != 3 or min(data_shape) < 1:
            raise ValueError(f"Autoencoder needs data_shape (C, H, W) of images, got {data_shape}")
        _check_positive("channels", channels)
        _check_positive("n_res_blocks", n_res_blocks)
        _check_positive("latent_channels", latent_channels)
        mult = [_check_positive("channel_mult entries", m) for m in channel_mult]
        if not mult:
            raise ValueError("Autoencoder channel_mult must list at least one level, e.g. [1, 2]")
        f = 2 ** (len(mult) - 1)
        c, h, w = data_shape
        if h % f or w % f:
            raise ValueError(f"Autoencoder with {len(mult)} levels downsamples by {f}: H and W must be divisible by {f}, got {h}x{w}")
        self.data_shape = data_shape
        self.latent_shape = (latent_channels, h // f, w // f)

        enc: list[nn.Module] = [conv3x3(c, channels * mult[0])]
        ch = channels * mult[0]
        for level, m in enumerate(mult):
            for _ in range(n_res_blocks):
                enc.append(ResBlock(ch, channels * m, 0, 0.0))
                ch = channels * m
            if level < len(mult) - 1:
                enc.append(conv3x3(ch, ch, stride=2))
        enc += [group_norm(ch), nn.SiLU(), conv3x3(ch, 2 * latent_channels)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [conv3x3(latent_channels, ch)]
        for level in reversed(range(len(mult))):
            for _ in range(n_res_blocks):
                dec.append(ResBlock(ch, channels * mult[level], 0, 0.0))
                ch = channels * mult[level]
            if level > 0:
                dec.append(Upsample(ch))
        dec += [group_norm(ch), nn.SiLU(), conv3x3(ch, c)]
        self.decoder = nn.Sequential(*dec)
        self.decoder_log_var = nn.Parameter(torch.full((c,), float(init_log_var)))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, log_var)`` of ``q(z | x)``, each ``(B, *latent_shape)``; ``log_var`` clamped to
        ``[-30, 20]`` so that a collapsing posterior stays finite."""
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"Autoencoder was built for images {self.data_shape}, got {tuple(x.shape)}")
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu, log_var.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, log_var)`` of ``p(x | z)``: ``(B, C, H, W)`` and the per-channel log-variance
        broadcast to it."""
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"Autoencoder decodes latents {self.latent_shape}, got {tuple(z.shape)}")
        mean = self.decoder(z)
        return mean, self.decoder_log_var[None, :, None, None].expand_as(mean)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ``decode(mu(x))`` mean ``(B, C, H, W)``."""
        return self.decode(self.encode(x)[0])[0]


def as_autoencoder(net: nn.Module, sde=None) -> nn.Module:
    """The ``model.parameterization`` of an autoencoder run: the network itself (no SDE involved)."""
    if not getattr(net, "is_autoencoder", False):
        raise ValueError(f"task=autoencoder needs model=autoencoder (sde_diffusion.Autoencoder), got {type(net).__name__}")
    return net


def gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """``log N(x; mean, e^log_var)`` per element (nats)."""
    return -0.5 * (F.mse_loss(x, mean, reduction="none") / log_var.exp() + log_var + torch.log(torch.tensor(2 * torch.pi, dtype=x.dtype)))
