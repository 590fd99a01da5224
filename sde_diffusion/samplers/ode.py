"""The probability-flow ODE solved by torchdiffeq: sampling (decode) and encoding.

Song et al. 2021, Eq. 13: ``dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t)`` has the marginals ``p_t`` of
the forward SDE, so integrating it from ``T`` down to ``eps`` maps prior samples to data
(:func:`probability_flow_sampler`, :func:`ode_decode`) and from ``eps`` up to ``T`` maps data to
latents (:func:`ode_encode`). Works for any SDE, with or without a kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchdiffeq import odeint
from tqdm.auto import tqdm

from .._checks import check_range
from .._solvers import ODE_ADAPTIVE_ORDERS as ADAPTIVE_ORDERS
from .._solvers import ODE_FIXED_GRID_ORDERS as FIXED_GRID_ORDERS
from ..scores import CountingScore
from ..sdes.base import SDE
from ..timesteps import check_grid
from ..types import ScoreFn
from .base import SamplerOutput, with_order


def _check_method(method: str, step_size: float | None) -> None:
    if method not in FIXED_GRID_ORDERS and method not in ADAPTIVE_ORDERS:
        raise ValueError(
            f"unknown ODE method {method!r}; choose a fixed-grid method {sorted(FIXED_GRID_ORDERS)} "
            f"or an adaptive one {sorted(ADAPTIVE_ORDERS)}"
        )
    if step_size is not None and method not in FIXED_GRID_ORDERS:
        raise ValueError(
            f"step_size applies to fixed-grid methods only, not to the adaptive {method!r}; "
            f"set rtol/atol instead or pick one of {sorted(FIXED_GRID_ORDERS)}"
        )
    if step_size is not None:
        check_range("step_size", step_size, low=0, low_open=True, hint="its sign follows the direction of ts")


@torch.no_grad()
def _solve(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    desc: str,
    progress: bool = False,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_size: float | None = None,
) -> SamplerOutput:
    """Integrate the probability-flow ODE over the monotone grid ``ts`` (either direction)."""
    _check_method(method, step_size)
    score = CountingScore(score_fn)
    ode = sde.probability_flow(score)
    ts = ts.to(dtype=x.dtype, device=x.device)
    options: dict[str, object]  # torchdiffeq's solver options: a tensor, a float or a grid function
    if method in ADAPTIVE_ORDERS:  # torchdiffeq steps past the end and interpolates; land on it
        options = {"step_t": ts[[-1]]}  # instead, so the score is never asked for t beyond eps
    elif step_size is not None:
        options = {"step_size": step_size}
    else:  # step exactly on the grid, keeping only its two ends in memory
        options = {"grid_constructor": lambda func, y0, t: ts}
    with tqdm(disable=not progress, desc=f"{desc} ({method})", unit="nfe", leave=False) as bar:

        def velocity(t: Tensor, y: Tensor) -> Tensor:
            if progress:
                bar.update()
                bar.set_postfix(t=f"{float(t):.4g}")
            return ode(t, y)

        x_end = odeint(velocity, x, ts[[0, -1]], rtol=rtol, atol=atol, method=method, options=options)[-1]
    return SamplerOutput(x_end, score.nfe)


@with_order(ADAPTIVE_ORDERS["dopri5"], {**FIXED_GRID_ORDERS, **ADAPTIVE_ORDERS})
def probability_flow_sampler(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **options,
) -> SamplerOutput:
    """Solve the probability-flow ODE (Song et al. 2021, Eq. 13) from ``ts[0]`` down to ``ts[-1]``.

    Options (keywords): ``method`` (default ``"dopri5"``), ``rtol`` and ``atol`` (default ``1e-5``,
    the paper's RK45 setting), ``step_size`` (default None). Adaptive methods (``dopri5``,
    ``bosh3``, ...) use only the ends of ``ts`` and the tolerances. Fixed-grid methods (``euler``,
    ``midpoint``, ``heun3``, ``rk4``, ...) step exactly on ``ts``, or with a uniform ``step_size``.
    ``probability_flow_sampler.order`` is the default method's order; ``method_orders`` holds all.
    ``generator`` is unused (the sampler is deterministic) and kept for the shared signature.

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)``.
    Returns: samples at ``ts[-1]`` and the NFE spent (fixed grid: N times the method's stages).
    """
    return _solve(sde, score_fn, x, check_grid(ts), desc="probability flow", progress=progress, **options)


def ode_decode(sde: SDE, score_fn: ScoreFn, z: Tensor, ts: Tensor, **options) -> SamplerOutput:
    """Latents ``z`` ``(B, *dims)`` at ``ts[0] = T`` to data at ``ts[-1] = eps``: the inverse of
    :func:`ode_encode` over the same grid. ``options`` as in :func:`probability_flow_sampler`."""
    return probability_flow_sampler(sde, score_fn, z, ts, **options)


def ode_encode(sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, **options) -> SamplerOutput:
    """Data ``x`` ``(B, *dims)`` at ``ts[-1] = eps`` to latents at ``ts[0] = T`` by solving the
    probability-flow ODE forward in time over the decreasing grid ``ts`` read backward.

    ``options`` as in :func:`probability_flow_sampler` (``progress``, ``method``, ``rtol``, ``atol``,
    ``step_size``). The map is deterministic and invertible:
    ``ode_decode(..., ode_encode(..., x, ts).samples, ts)`` returns ``x`` up to the solver's error.
    Returns the latents (as ``samples``) and the NFE.
    """
    return _solve(sde, score_fn, x, check_grid(ts).flip(0), desc="encode", **options)
