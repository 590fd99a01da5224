"""DDPM's discrete chain (Ho et al. 2020) as a kernel-first process, and its continuous-time view.

The chain ``q(x_i | x_{i-1}) = N(sqrt(1 - beta_i) x_{i-1}, beta_i I)``, ``i = 1..T``, has the
marginals ``q(x_i | x_0) = N(sqrt(abar_i) x_0, (1 - abar_i) I)`` with ``abar_i = prod_{j <= i} (1 - beta_j)``
(Ho et al. 2020, Eq. 4) and the posteriors ``q(x_{i-1} | x_i, x_0) = N(mu_i, beta_tilde_i I)`` (Eq. 6-7).
:class:`DiscreteSchedule` holds them; :meth:`DiscreteSchedule.respace` keeps any subset of the steps
with recomputed betas (Nichol & Dhariwal 2021, Sec. 4). :class:`DDPMSDE` is the same schedule in
continuous time, ``t_i = i / T``, with ``log abar`` interpolated between the steps (a monotone
cubic: the discrete-model view of DPM-Solver, Lu et al. 2022a, App. D, made smooth for adaptive
ODE solvers; see :class:`DiscreteBeta`), so every continuous-time sampler and the probability-flow
likelihood run on it and meet the chain's marginals exactly at the ``T + 1`` step times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import check_range
from .._shapes import expand_like
from .vp import VariancePreservingSDE


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear betas ``(T,)`` from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4), float64."""
    return torch.linspace(beta_start, beta_end, int(T), dtype=torch.float64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """iDDPM's cosine betas ``(T,)`` (Nichol & Dhariwal 2021, Eq. 17): ``abar(t) = f(t) / f(0)`` with
    ``f(t) = cos^2((t / T + s) / (1 + s) pi / 2)``, ``beta_i = 1 - abar(i) / abar(i - 1)`` clipped at
    ``max_beta``, float64."""
    i = torch.arange(int(T) + 1, dtype=torch.float64)
    f = torch.cos((i / T + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


class DiscreteSchedule:
    """A DDPM chain of ``T`` Gaussian steps with variances ``betas`` ``(T,)`` in ``(0, 1)``.

    Step numbers ``i`` run from 0 (data) to ``T``; the tables are float64 ``(T + 1,)`` with
    ``betas[0] = 0`` and ``alpha_bars[0] = 1``. ``timesteps`` ``(T + 1,)`` are the original step
    numbers a respaced schedule keeps (``arange(T + 1)`` otherwise).
    """

    def __init__(self, betas: Tensor, timesteps: Tensor | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or len(betas) < 1:
            raise ValueError(f"betas must be a 1-D array of T >= 1 step variances, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"every beta must lie in (0, 1), got values from {float(betas.min())} to {float(betas.max())}")
        self.T = len(betas)
        self.betas = torch.cat([betas.new_zeros(1), betas])
        # in logs, so that 1 - abar keeps its digits where abar is near 1 (the first steps)
        self.log_alpha_bars = torch.cumsum(torch.log1p(-self.betas), 0)
        self.alpha_bars = self.log_alpha_bars.exp()
        self.one_minus_alpha_bars = -torch.expm1(self.log_alpha_bars)
        self.timesteps = torch.arange(self.T + 1) if timesteps is None else torch.as_tensor(timesteps)

    def kernel(self, i: Tensor | int) -> tuple[Tensor, Tensor]:
        """``(sqrt(abar_i), sqrt(1 - abar_i))`` of ``q(x_i | x_0)`` for integer steps ``i`` (any shape)."""
        i = torch.as_tensor(i)
        return self.alpha_bars[i].sqrt(), self.one_minus_alpha_bars[i].sqrt()

    def posterior_variance(self, i: Tensor | int) -> Tensor:
        """``beta_tilde_i = (1 - abar_{i-1}) / (1 - abar_i) beta_i`` for ``i >= 1`` (Ho et al. 2020, Eq. 7)."""
        i = torch.as_tensor(i)
        return self.one_minus_alpha_bars[i - 1] / self.one_minus_alpha_bars[i] * self.betas[i]

    def posterior_mean(self, x0: Tensor, x_i: Tensor, i: Tensor | int) -> Tensor:
        """``mu_i = sqrt(abar_{i-1}) beta_i / (1 - abar_i) x_0 + sqrt(1 - beta_i) (1 - abar_{i-1}) / (1 - abar_i) x_i``
        (Ho et al. 2020, Eq. 7); ``x0``, ``x_i`` ``(B, *dims)``, steps ``i >= 1`` an int or ``(B,)``."""
        i = torch.as_tensor(i, device=self.betas.device)
        a_prev, beta = self.alpha_bars[i - 1], self.betas[i]
        u, u_prev = self.one_minus_alpha_bars[i], self.one_minus_alpha_bars[i - 1]
        c0, ci = (a_prev.sqrt() * beta / u).to(x0), ((1 - beta).sqrt() * u_prev / u).to(x0)
        return expand_like(c0, x0) * x0 + expand_like(ci, x0) * x_i

    def reverse_log_variance(self, i: Tensor | int, variance: str, interpolation: Tensor | None = None) -> Tensor:
        """``log sigma_i^2`` of the reverse step ``p(x_{i-1} | x_i)``, float64 like ``i``'s shape, or
        like ``interpolation`` for ``"learned"``.

        ``"large"``: ``beta_i``; ``"small"``: ``beta_tilde_i`` (Ho et al. 2020, Sec. 3.2);
        ``"learned"``: ``v log beta_i + (1 - v) log beta_tilde_i`` with ``v = interpolation``
        (Nichol & Dhariwal 2021, Eq. 15). As in iDDPM's code, ``beta_tilde_1 = 0`` is replaced by
        ``beta_tilde_2`` in the logs, and ``"large"`` uses it at step 1 too (the decoder's variance).
        """
        i = torch.as_tensor(i, device=self.betas.device)
        tilde = self.posterior_variance(torch.arange(1, self.T + 1, device=i.device))
        tilde[0] = tilde[1] if self.T > 1 else self.betas[1]
        log_small = torch.cat([tilde.new_zeros(1), tilde.log()])[i]
        log_large = torch.where(i == 1, log_small, self.betas[i].log())
        if variance == "large":
            return log_large
        if variance == "small":
            return log_small
        if variance == "learned":
            if interpolation is None:
                raise ValueError("variance='learned' needs the network's interpolation v (a model with learned variances)")
            v = interpolation.to(torch.float64)
            log_beta, log_small = self.betas[i].log().to(v.device), log_small.to(v.device)
            return expand_like(log_beta, v) * v + expand_like(log_small, v) * (1 - v)
        raise ValueError(f"variance must be 'large' (beta), 'small' (beta_tilde) or 'learned', got {variance!r}")

    def respace(self, keep: Sequence[int] | Tensor) -> DiscreteSchedule:
        """The chain on the kept steps ``keep`` (increasing, within ``1..T``; the last must be ``T``),
        with ``beta'_k = 1 - abar_{s_k} / abar_{s_{k-1}}`` (``s_0 = 0``), so that its ``abar`` equals
        the original ``abar`` at the kept steps (Nichol & Dhariwal 2021, Sec. 4)."""
        keep = torch.as_tensor(keep, dtype=torch.long)
        if keep.dim() != 1 or len(keep) < 1 or not bool((keep[1:] > keep[:-1]).all()) or int(keep[0]) < 1 or int(keep[-1]) != self.T:
            raise ValueError(f"keep must be increasing step numbers in 1..{self.T} ending at {self.T}, got {keep.tolist()[:8]}")
        steps = torch.cat([keep.new_zeros(1), keep])
        log_abar = self.log_alpha_bars[steps]
        return DiscreteSchedule(-torch.expm1(log_abar[1:] - log_abar[:-1]), self.timesteps[steps])

    def evenly_spaced(self, n_steps: int) -> DiscreteSchedule:
        """:meth:`respace` on ``n_steps`` steps spread evenly over ``1..T``, both ends kept (iDDPM's
        strided sampling, Nichol & Dhariwal 2021, Sec. 4: the last model call is at step 1)."""
        n_steps = check_range("n_steps", n_steps, low=1, high=self.T, integer=True, hint="steps of the chain to keep")
        if n_steps == 1:
            return self.respace([self.T])
        keep = torch.linspace(1, self.T, int(n_steps), dtype=torch.float64).round().long()
        return self.respace(keep)

    def __repr__(self) -> str:
        return f"DiscreteSchedule(T={self.T}, beta_1={float(self.betas[1]):.3g}, beta_T={float(self.betas[-1]):.3g})"


class DiscreteBeta:
    """A continuous ``beta(t)`` on ``[0, 1]`` whose ``B(t) = int_0^t beta`` passes through the chain's
    ``(i / T, -log abar_i)``: the monotone cubic (PCHIP, Fritsch & Carlson 1980) interpolant of ``B``
    between the knots, so ``B`` is increasing and ``beta = B' >= 0`` is continuous. A schedule for
    :class:`~sde_diffusion.sdes.vp.VariancePreservingSDE` (``beta`` and ``integral``).

    Why not linear ``B`` (a piecewise-constant ``beta``, DPM-Solver's interpolation of ``log alpha``):
    both meet the chain exactly at its steps, but the ``T`` jumps of a piecewise-constant ``beta`` make
    an adaptive ODE solver stop at every knot: the probability-flow likelihood of the linear chain
    (``T`` = 1000) took 12,000 NFE at ``rtol`` 1e-8 and still missed the exact value by 2.4e-3 nats.
    Written by hand because torch has no monotone spline, and scipy's would leave the tensor path.
    """

    def __init__(self, schedule: DiscreteSchedule):
        self.schedule = schedule
        T = schedule.T
        self._B = -schedule.log_alpha_bars  # (T + 1,), B at the knots
        secant = T * (self._B[1:] - self._B[:-1])  # (T,), > 0 since every beta is in (0, 1)
        slope = torch.empty_like(self._B)  # dB/dt at the knots: Fritsch-Carlson's harmonic means
        slope[1:-1] = 2.0 / (1.0 / secant[:-1] + 1.0 / secant[1:])
        if T == 1:
            slope[:] = secant[0]
        else:  # one-sided three-point ends, kept within [0, 3 secant] for monotonicity (as scipy's pchip)
            for end, (near, far) in ((0, (secant[0], secant[1])), (-1, (secant[-1], secant[-2]))):
                slope[end] = ((3 * near - far) / 2).clamp(min=0.0, max=float(3 * near))
        self._slope = slope

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Step index ``k`` (``(B,)`` int64) of each time and its position ``u`` in ``[0, 1]`` on the step, float64."""
        scaled = t.detach().to(torch.float64) * self.schedule.T
        k = scaled.floor().long().clamp(0, self.schedule.T - 1)
        return k, scaled - k

    def _hermite(self, t: Tensor, derivative: bool) -> Tensor:
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.float64
        k, u = self._segment(t)
        B, d = self._B.to(k.device), self._slope.to(k.device)
        y0, y1, d0, d1 = B[k], B[k + 1], d[k] / self.schedule.T, d[k + 1] / self.schedule.T  # slopes per unit u
        if derivative:
            value = (6 * u * (1 - u) * (y1 - y0) + (1 - u) * (1 - 3 * u) * d0 + u * (3 * u - 2) * d1) * self.schedule.T
        else:
            value = y0 + u * (d0 + u * (3 * (y1 - y0) - 2 * d0 - d1 + u * (d0 + d1 - 2 * (y1 - y0))))
        return value.to(dtype)

    def beta(self, t: Tensor) -> Tensor:
        return self._hermite(t, derivative=True)

    def integral(self, t: Tensor) -> Tensor:
        return self._hermite(t, derivative=False)

    def __repr__(self) -> str:
        return f"DiscreteBeta({self.schedule!r})"


class DDPMSDE(VariancePreservingSDE):
    """A DDPM chain in continuous time: ``t_i = i / T`` and ``m(t_i)^2 = abar_i`` exactly, ``log abar``
    a monotone cubic in between (:class:`DiscreteBeta`). ``schedule``: ``"linear"`` (Ho et al. 2020:
    ``T`` = 1000, betas 1e-4 to 0.02), ``"cosine"`` (Nichol & Dhariwal 2021, ``s`` = 0.008, betas
    clipped at 0.999) or a :class:`DiscreteSchedule`. ``discrete`` holds the chain's tables.
    """

    def __init__(self, schedule: str | DiscreteSchedule = "linear", T: int = 1000):
        if isinstance(schedule, str):
            makers = {"linear": linear_betas, "cosine": cosine_betas}
            if schedule not in makers:
                raise ValueError(f"schedule must be 'linear', 'cosine' or a DiscreteSchedule, got {schedule!r}")
            check_range("T", T, low=1, integer=True, hint="the number of steps")
            schedule = DiscreteSchedule(makers[schedule](int(T)))
        self.discrete = schedule
        super().__init__(DiscreteBeta(schedule))

    def __repr__(self) -> str:
        return f"DDPMSDE({self.discrete!r})"
