"""The one shape rule of the library: data are ``(B, *dims)``, per-sample scalars are ``(B,)``.

Every function that mixes a per-sample scalar (a time, a kernel coefficient, a diffusion value)
with data goes through :func:`batch_time` and :func:`expand_like`, so 2-D points and images share
one code path.
"""

from __future__ import annotations

import torch
from torch import Tensor


def batch_time(t: float | Tensor, x: Tensor) -> Tensor:
    """Return ``t`` as a ``(B,)`` tensor on ``x``'s device and dtype.

    ``t`` may be a Python number, a 0-d tensor, a ``(1,)`` tensor or a ``(B,)`` tensor; ``B`` is
    ``x.shape[0]``. Anything else is rejected with the shapes named.
    """
    if x.dim() < 1:
        raise ValueError("data must have shape (B, *dims); got a 0-d tensor")
    batch = x.shape[0]
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0 or t.shape == (1,):
        return t.reshape(()).expand(batch)
    if t.shape != (batch,):
        raise ValueError(
            f"time must be a scalar or have shape (B,) = ({batch},) to match data of shape {tuple(x.shape)}; got shape {tuple(t.shape)}"
        )
    return t


def expand_like(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample ``(B,)`` tensor to ``(B, 1, ..., 1)`` so it broadcasts against ``x``."""
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def flat_dim(x: Tensor) -> int:
    """Number of dimensions ``D = prod(dims)`` of one sample of ``x`` with shape ``(B, *dims)``."""
    return x[0].numel()


def check_data(x: Tensor, name: str = "data") -> Tensor:
    """Reject data that cannot be trained on: not a floating tensor, no batch axis, empty, or
    containing NaN or infinity. Returns ``x`` unchanged."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}; convert with .float()")
    if x.dim() < 2:
        raise ValueError(
            f"{name} must have shape (N, *dims) with at least one data axis; got shape {tuple(x.shape)} (for scalar data use x[:, None])"
        )
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.reshape(x.shape[0], -1).any(dim=1).nonzero().flatten()
        raise ValueError(
            f"{name} contains NaN or infinite values in {rows.numel()} of {x.shape[0]} samples "
            f"(first at index {rows[0].item()}); clean or drop them before training"
        )
    return x
