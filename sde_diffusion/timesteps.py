"""Time grids for samplers, kept apart from the SDE: the SDE says what the process is, a grid how a sampler walks it.

A grid is a 1-D tensor ``(N + 1,)`` of forward times running from ``sde.T`` down to ``eps``; a
sampler with ``N`` steps moves from ``ts[i]`` to ``ts[i + 1]``. Every grid function has the
signature ``grid(sde, n_steps, eps, ..., *, dtype, device)`` so configs can swap them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_range
from .sdes.base import SDE


def _check(n_steps: int, eps: float, T: float) -> None:
    check_range("n_steps", n_steps, low=1, integer=True)
    check_range("eps", eps, low=0.0, high=T, high_open=True, hint=f"the grid ends at eps and starts at T = {T:g}")


def uniform_time_grid(sde: SDE, n_steps: int, eps: float = 1e-3, *, dtype=torch.float32, device=None) -> Tensor:
    """``N + 1`` times uniformly spaced from ``sde.T`` to ``eps`` (Song et al. 2021's sampling grid)."""
    _check(n_steps, eps, sde.T)
    return torch.linspace(sde.T, eps, int(n_steps) + 1, dtype=dtype, device=device)


def quadratic_time_grid(sde: SDE, n_steps: int, eps: float = 1e-3, *, dtype=torch.float32, device=None) -> Tensor:
    """``N + 1`` times from ``sde.T`` to ``eps`` spaced quadratically: ``t_i = eps + (T - eps) (1 - i/N)^2``,
    dense at small ``t`` (DDIM's "quadratic" time steps, Song, Meng, Ermon 2021, App. D.2)."""
    _check(n_steps, eps, sde.T)
    u = torch.linspace(1.0, 0.0, int(n_steps) + 1, dtype=torch.float64)
    return (eps + (sde.T - eps) * u**2).to(dtype=dtype, device=device)


def _check_positive_eps(sde: SDE, n_steps: int, eps: float) -> None:
    _check(n_steps, eps, sde.T)
    if eps <= 0.0:
        raise ValueError(
            f"log-SNR and sigma grids need eps > 0 (the log-SNR is +inf at t = 0), got eps={eps}; use eps=1e-3 (VP, sub-VP) or eps=1e-5"
        )
    if not sde.has_kernel:
        raise ValueError(
            f"{type(sde).__name__} has no perturbation kernel, so its log-SNR is unknown; implement kernel(t) or use uniform_time_grid"
        )


def _times_at_log_snr(sde: SDE, log_snr: Tensor, eps: float, dtype, device) -> Tensor:
    """Map decreasing-in-t log-SNR values ``(N + 1,)`` back to times, pinning the ends to T and eps."""
    t = sde.time_from_log_snr(log_snr, eps)
    t[0], t[-1] = sde.T, eps  # bisection is exact to ~1e-16; the ends must be exact
    return t.to(dtype=dtype, device=device)


def log_snr_time_grid(sde: SDE, n_steps: int, eps: float = 1e-3, *, dtype=torch.float32, device=None) -> Tensor:
    """``N + 1`` times from ``sde.T`` to ``eps`` whose log-SNRs ``lambda(t)`` are uniformly spaced.

    The natural grid of exponential integrators (DPM-Solver, Lu et al. 2022, Sec. 3.4: uniform in
    ``lambda = logSNR / 2``, which is the same grid). Needs ``eps > 0`` and an SDE with a kernel.
    """
    _check_positive_eps(sde, n_steps, eps)
    ends = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
    log_snr = torch.linspace(float(ends[0]), float(ends[1]), int(n_steps) + 1, dtype=torch.float64)
    return _times_at_log_snr(sde, log_snr, eps, dtype, device)


def edm_time_grid(sde: SDE, n_steps: int, eps: float = 1e-3, rho: float = 7.0, *, dtype=torch.float32, device=None) -> Tensor:
    """``N + 1`` times from ``sde.T`` to ``eps`` at EDM's rho-spaced noise levels (Karras et al. 2022, Eq. 5).

    With ``sigma(t) = s(t) / m(t) = exp(-logSNR(t) / 2)``, ``sigma_max = sigma(T)`` and
    ``sigma_min = sigma(eps)``:
    ``sigma_i = (sigma_max^(1/rho) + i / N (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, ``i = 0..N``,
    mapped back to times by :meth:`SDE.time_from_log_snr`. ``rho = 7`` is the paper's choice;
    ``rho -> inf`` tends to :func:`log_snr_time_grid`.
    """
    _check_positive_eps(sde, n_steps, eps)
    check_range("rho", rho, low=0.0, low_open=True, hint="Karras et al. 2022 use rho = 7")
    sigma_ends = torch.exp(-0.5 * sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)))
    root = torch.linspace(0.0, 1.0, int(n_steps) + 1, dtype=torch.float64)
    root = sigma_ends[0] ** (1 / rho) + root * (sigma_ends[1] ** (1 / rho) - sigma_ends[0] ** (1 / rho))
    return _times_at_log_snr(sde, -2.0 * rho * torch.log(root), eps, dtype, device)


def discrete_time_grid(sde: SDE, n_steps: int, *, dtype=torch.float32, device=None) -> Tensor:
    """The times ``i / T`` of ``n_steps`` steps of a discrete-time SDE's chain (``sde.discrete``, a
    :class:`~sde_diffusion.sdes.DiscreteSchedule`), spread evenly over ``1..T`` with both ends kept,
    decreasing from ``T / T = 1`` to ``1 / T`` (iDDPM's strided sampling). ``(n_steps,)``; with
    ``denoise_to_zero`` a sampler then makes ``n_steps`` network calls, DDPM's ``K``-step chain."""
    chain = getattr(sde, "discrete", None)
    if chain is None:
        raise ValueError(f"discrete_time_grid needs a discrete-time SDE (sde=ddpm or ddpm_cosine); {type(sde).__name__} has none")
    check_range("n_steps", n_steps, low=2, high=chain.T, integer=True, hint="steps of the chain to visit")
    steps = chain.evenly_spaced(int(n_steps)).timesteps[1:].flip(0)
    return (steps.to(torch.float64) / chain.T).to(dtype=dtype, device=device)


def check_grid(ts: Tensor) -> Tensor:
    """Return ``ts`` if it is a sampler grid: a 1-D floating tensor of ``N + 1 >= 2`` strictly
    decreasing times; otherwise raise an error naming the problem. Samplers call it first."""
    if not isinstance(ts, Tensor) or not ts.is_floating_point() or ts.dim() != 1 or len(ts) < 2:
        shape = tuple(ts.shape) if isinstance(ts, Tensor) else type(ts).__name__
        raise ValueError(
            f"ts must be a 1-D floating tensor of N + 1 >= 2 times, got {shape}; build it with a grid "
            f"function such as uniform_time_grid(sde, n_steps, eps)"
        )
    if not (ts[1:] < ts[:-1]).all():
        raise ValueError(
            f"ts must decrease strictly from T to eps (samplers run backward in time), got "
            f"{ts.tolist() if len(ts) <= 8 else ts[:4].tolist() + ['...']}"
        )
    return ts
