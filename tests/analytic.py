"""Analytic truth shared by every test: SDEs under test, Gaussian and Gaussian-mixture data with
exact scores and log-densities (docs/references.md, "Exact test oracles")."""

from __future__ import annotations

import math

import torch

import sde_diffusion as sd
from sde_diffusion.examples.quadratic_vp import QuadraticVPSDE


def all_sdes() -> dict[str, sd.SDE]:
    """Every shipped SDE with a Gaussian kernel, plus the documented user-defined example."""
    return {
        "vp": sd.VPSDE(),
        "subvp": sd.SubVPSDE(),
        "ve": sd.VESDE(),
        "vp_cosine": sd.CosineVPSDE(),
        "custom": QuadraticVPSDE(),
    }


def core_sdes() -> dict[str, sd.SDE]:
    """VP, sub-VP and VE with the reference defaults."""
    return {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}


def gaussian(dim: int = 2, seed: int = 0, event_shape=None) -> sd.GaussianMixture:
    """One Gaussian with a random mean and a random well-conditioned full covariance."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(1, dim, generator=g, dtype=torch.float64)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    cov = 0.25 * (a @ a.T) + 0.1 * torch.eye(dim, dtype=torch.float64)
    return sd.GaussianMixture([1.0], mean, cov[None], event_shape=event_shape)


def mixture(dim: int = 2, n_components: int = 4, seed: int = 0, spread: float = 2.0, event_shape=None) -> sd.GaussianMixture:
    """A mixture with unequal weights, separated means and random anisotropic covariances."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(n_components, generator=g, dtype=torch.float64) + 0.5
    means = spread * torch.randn(n_components, dim, generator=g, dtype=torch.float64)
    a = torch.randn(n_components, dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    covs = 0.1 * a @ a.transpose(1, 2) + 0.05 * torch.eye(dim, dtype=torch.float64)
    return sd.GaussianMixture(weights, means, covs, event_shape=event_shape)


def gaussian_marginal_cov(dist: sd.GaussianMixture, sde: sd.SDE, t: float) -> torch.Tensor:
    """Covariance ``m^2 Sigma + s^2 I`` of the marginal at ``t`` of a one-component mixture."""
    m, s = sde.kernel(torch.tensor(t, dtype=torch.float64))
    return m**2 * dist.covs[0] + s**2 * torch.eye(dist.dim, dtype=torch.float64)


class KernelFreeVP(sd.SDE):
    """The VP SDE as a user might write it without knowing its kernel: drift and diffusion only."""

    prior_std = 1.0

    def __init__(self):
        self._vp = sd.VPSDE()

    def drift(self, x, t):
        return self._vp.drift(x, t)

    def diffusion(self, t):
        return self._vp.diffusion(t)


class KernelFreeOU(sd.SDE):
    """``dx = -x dt + dw`` written without its kernel; the probability-flow ODE with score ``-x`` has
    the closed-form flow ``x_s = x_t exp((t - s) / 2)``."""

    prior_std = 1.0

    def drift(self, x, t):
        return -x

    def diffusion(self, t):
        return torch.ones_like(torch.as_tensor(t))
