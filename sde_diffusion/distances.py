"""Distances between sample sets, for judging samples against held-out data."""

from __future__ import annotations

import torch
from torch import Tensor


def sliced_wasserstein(a: Tensor, b: Tensor, *, n_projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance between two equal-size sample sets ``(N, *dims)``.

    ``SW2(a, b)^2 = E_u W2^2(u^T a, u^T b)`` over directions ``u`` uniform on the sphere; each 1-D
    ``W2`` is computed exactly by sorting (Rabin et al. 2011). Returns ``SW2`` in data units.
    """
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs sample sets of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).to(a)
    u = torch.randn(a.shape[1], n_projections, generator=generator, dtype=torch.float64).to(a.device)
    u = u / u.norm(dim=0, keepdim=True)
    pa, _ = (a @ u).sort(dim=0)
    pb, _ = (b @ u).sort(dim=0)
    return (pa - pb).pow(2).mean().sqrt().item()
