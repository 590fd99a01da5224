"""Reference solve of the augmented ODE with ``scipy.integrate.solve_ivp``.

An independent integrator for checking the torchdiffeq path: the tuple state is flattened to one
float64 numpy vector and every right-hand-side evaluation goes through numpy, which is slow but
acceptable for a reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

ALIASES = {"dopri5": "RK45", "bosh3": "RK23"}
"""torchdiffeq names of the embedded Runge-Kutta pairs scipy implements with the same tableau."""


def solve_ivp_reference(
    func: Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]],
    state: tuple[Tensor, ...],
    t_span: Tensor,
    method: str,
    rtol: float,
    atol: float,
    options: dict[str, Any] | None,
) -> tuple[Tensor, ...]:
    """Integrate ``d state / dt = func(t, state)`` over ``t_span = (t0, t1)`` with ``solve_ivp``.

    ``state`` is a tuple of tensors; ``func`` is evaluated in the state's dtype and device, the
    integrator works in float64. Returns the state at ``t1`` in the input's dtype.
    """
    like = state[0]
    shapes = [s.shape for s in state]
    sizes = [s.numel() for s in state]

    def unflatten(y: np.ndarray) -> tuple[Tensor, ...]:
        flat = torch.from_numpy(y).to(like.dtype).to(like.device)
        return tuple(part.reshape(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True))

    def flatten(parts: tuple[Tensor, ...]) -> np.ndarray:
        return torch.cat([p.reshape(-1) for p in parts]).to("cpu", torch.float64).numpy()

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        return flatten(func(torch.tensor(t, dtype=like.dtype, device=like.device), unflatten(y)))

    t0, t1 = (float(t) for t in t_span)
    solution = solve_ivp(
        rhs,
        (t0, t1),
        flatten(state),
        method=ALIASES.get(method, method),
        rtol=rtol,
        atol=atol,
        **(options or {}),
    )
    if not solution.success:
        raise RuntimeError(f"solve_ivp ({method}) failed: {solution.message}")
    return unflatten(solution.y[:, -1])
