"""The training loss of a KL-regularised autoencoder (Rombach et al. 2022, App. G; Kingma & Welling
2014, Eq. 10): reconstruction ``-log p(x | z)``, ``z ~ q(z | x)``, plus a weighted KL to ``N(0, I)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_range
from .._noise import randn
from ..models.autoencoder import gaussian_log_prob
from .vlb import discretized_gaussian_log_prob


def decoder_log_prob(model, x: Tensor, z: Tensor, levels: int | None, interval: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """``log p(x | z)`` per sample ``(B,)`` in nats: the decoder's Gaussian discretized to the data's
    ``K = levels`` values (a log-probability of discrete data), or its density for continuous data
    (``levels`` None)."""
    mean, log_var = model.decode(z)
    if levels is None:
        return gaussian_log_prob(x, mean, log_var).flatten(1).sum(1)
    return discretized_gaussian_log_prob(x, mean, log_var, levels, interval).flatten(1).sum(1)


def autoencoder_terms(model, x: Tensor, *, levels: int | None, generator=None) -> dict[str, Tensor]:
    """One reparameterized draw ``z = mu + sigma eps ~ q(z | x)`` and, per sample ``(B,)`` in nats:
    ``reconstruction = -log p(x | z)``, ``kl = KL(q(z | x) || N(0, I))`` (closed form) and
    ``log_q = log q(z | x)``; also ``z`` itself. ``reconstruction + kl`` is the VAE's negative ELBO."""
    mu, log_var = model.encode(x)
    std = (0.5 * log_var).exp()
    eps = randn(mu.shape, generator, dtype=mu.dtype, device=mu.device)
    z = mu + std * eps
    d = mu[0].numel()
    log_q = -0.5 * (eps.pow(2) + log_var).flatten(1).sum(1) - 0.5 * d * math.log(2 * math.pi)
    kl = 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var).flatten(1).sum(1)
    return {"reconstruction": -decoder_log_prob(model, x, z, levels), "kl": kl, "log_q": log_q, "z": z}


class AutoencoderLoss:
    """``loss_fn(model, sde, x, generator=...) -> (B,)``: ``(-log p(x | z) + kl_weight KL) / D`` in
    nats per data dimension, in the Trainer's loss signature (the SDE plays no part).

    Args:
        kl_weight: the KL's weight (1: the VAE's ELBO; LDM uses a small weight, so the latents keep
            detail and the diffusion model, not the KL, shapes their distribution).
        levels: the data's ``K`` levels (the decoder is discretized to them), or None for continuous
            data; the config's ``auto`` takes the data's.
    """

    def __init__(self, kl_weight: float = 0.01, levels: int | None = None):
        self.kl_weight = check_range("loss.kl_weight", kl_weight, low=0, hint="1: the VAE's ELBO; LDM: about 1e-6 to 1e-2")
        self.levels = check_range(
            "loss.levels", levels, low=2, integer=True, optional=True, hint="the data's levels, e.g. 17 for the digits"
        )

    def __call__(self, model, sde, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        terms = autoencoder_terms(model, x, levels=self.levels, generator=generator)
        return (terms["reconstruction"] + self.kl_weight * terms["kl"]) / x[0].numel()

    def __repr__(self) -> str:
        return f"AutoencoderLoss(kl_weight={self.kl_weight:g}, levels={self.levels})"
