"""Distances between sample sets, for judging samples against held-out data."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_range


def sliced_wasserstein(a: Tensor, b: Tensor, *, n_projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance ``SW2`` between two sample sets: how far apart the two
    distributions are, in the data's own units (the number ``sde-train`` and ``sde-sample`` report
    against held-out data; 0 for identical sets).

    ``SW2(a, b)^2 = E_u W2^2(u^T a, u^T b)`` over directions ``u`` uniform on the unit sphere of
    ``R^D`` (Rabin et al. 2011, "Wasserstein barycenter and its application to texture mixing";
    Bonneel et al. 2015, "Sliced and Radon Wasserstein barycenters of measures"): the squared
    2-Wasserstein distance of the two sets' 1-D projections, averaged over directions. Each 1-D ``W2`` between equal-size empirical sets is exact by sorting,
    ``W2^2 = mean_i (a_(i) - b_(i))^2``. The expectation over ``u`` is a Monte Carlo mean over
    ``n_projections`` directions (the same directions for ``a`` and ``b``), so the result is random:
    fix ``generator`` to compare numbers, raise ``n_projections`` to reduce its noise. ``SW2`` is
    at most ``W2``: a shift of one set by a vector ``m`` gives ``|m| / sqrt(D)``.

    Args:
        a, b: ``(N, *dims)`` samples of the same shape (the same ``N``: sorting pairs their
            quantiles), any float dtype; flattened to ``(N, D)`` and compared in float64 on ``a``'s device.
        n_projections: the number of random directions, an integer >= 1 (default 256).
        generator: a CPU generator for the directions (None: torch's global one).
    Returns: ``SW2(a, b)`` as a Python float, in the units of the data (not squared).
    """
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs sample sets of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2 or a.shape[0] < 1:
        raise ValueError(f"sliced_wasserstein needs sample sets (N, *dims) with N >= 1, got shape {tuple(a.shape)}")
    n_projections = check_range("n_projections", n_projections, low=1, integer=True)
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).to(a)
    u = torch.randn(a.shape[1], n_projections, generator=generator, dtype=torch.float64).to(a.device)
    u = u / u.norm(dim=0, keepdim=True)
    pa, _ = (a @ u).sort(dim=0)
    pb, _ = (b @ u).sort(dim=0)
    return (pa - pb).pow(2).mean().sqrt().item()


def sliced_w2_to_held_out(samples: torch.Tensor, held_out: torch.Tensor) -> float:
    """The sample-quality number of ``sde-train``'s and ``sde-sample``'s summaries: sliced
    2-Wasserstein distance between the first ``n = min(N_samples, N_held_out)`` samples and held-out
    points (in the data's training units), with fixed projections, so the two apps agree."""
    n = min(samples.shape[0], held_out.shape[0])
    return sliced_wasserstein(samples[:n].float().cpu(), held_out[:n].float().cpu(), generator=torch.Generator().manual_seed(0))
