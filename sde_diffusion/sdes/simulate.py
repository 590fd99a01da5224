"""Forward simulation of an SDE, for SDEs without a closed-form kernel and for testing kernels."""

from __future__ import annotations

from torch import Tensor

from .._checks import check_range
from .._noise import NoiseSource, randn_like
from .._shapes import batch_time, expand_like
from .base import SDE


def simulate_forward(
    sde: SDE,
    x0: Tensor,
    t: float | Tensor,
    n_steps: int = 100,
    *,
    generator: NoiseSource = None,
) -> Tensor:
    """Draw ``x_t`` by Euler-Maruyama on the forward SDE from ``0`` to ``t`` in ``n_steps`` steps.

    ``x0``: ``(B, *dims)``; ``t``: scalar or ``(B,)``, each sample integrated over its own uniform
    grid of step ``t / n_steps``. Uses ``drift`` and ``diffusion`` directly (not ``discretize``),
    ``x <- x + f(x, t) dt + g(t) sqrt(dt) z``; weak order 1 in ``dt``.
    """
    n_steps = check_range("n_steps", n_steps, low=1, integer=True)
    t_end = batch_time(t, x0)
    dt = t_end / n_steps
    sqrt_dt = expand_like(dt.sqrt(), x0)
    x = x0
    for i in range(n_steps):
        ti = dt * i
        z = randn_like(x, generator)
        g = expand_like(sde.diffusion(ti), x)
        x = x + sde.drift(x, ti) * expand_like(dt, x) + g * sqrt_dt * z
    return x


def sample_marginal(
    sde: SDE,
    x0: Tensor,
    t: float | Tensor,
    *,
    generator: NoiseSource = None,
    n_steps: int = 100,
) -> Tensor:
    """Draw ``x_t ~ p_0t(. | x0)``: exactly from the kernel when the SDE has one, else by simulation."""
    if sde.has_kernel:
        return sde.perturb(x0, t, generator=generator)[0]
    return simulate_forward(sde, x0, t, n_steps, generator=generator)
