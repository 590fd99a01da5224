"""Time grids for samplers, kept separate from the SDE (STYLE principle 3).

A grid is a 1-D tensor ``(N + 1,)`` of forward times running from ``sde.T`` down to ``eps``; a
sampler with ``N`` steps moves from ``ts[i]`` to ``ts[i + 1]``. Every grid function has the
signature ``grid(sde, n_steps, eps, ..., *, dtype, device)`` so configs can swap them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sdes.base import SDE


def _check(n_steps: int, eps: float, T: float) -> None:
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps}")
    if not 0.0 <= eps < T:
        raise ValueError(f"need 0 <= eps < T, got eps={eps}, T={T}")


def uniform_time_grid(
    sde: SDE, n_steps: int, eps: float = 1e-3, *, dtype=torch.float32, device=None
) -> Tensor:
    """``N + 1`` times uniformly spaced from ``sde.T`` to ``eps`` (Song et al. 2021's sampling grid)."""
    _check(n_steps, eps, sde.T)
    return torch.linspace(sde.T, eps, int(n_steps) + 1, dtype=dtype, device=device)
