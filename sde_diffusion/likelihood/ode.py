"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, App. D).

The probability-flow ODE ``dx/dt = f~(x, t) = f(x, t) - 1/2 g(t)^2 s(x, t)`` is integrated from
``t = eps`` to ``T`` jointly with the accumulated divergence (instantaneous change of variables,
Chen et al. 2018, Thm. 1; Grathwohl et al. 2019):

    d/dt (x_t, Delta_t) = (f~(x_t, t), div f~(x_t, t)),    Delta_eps = 0,
    log p_eps(x) = log p_T(x_T) + Delta_T,

where the SDE's prior stands in for ``p_T``. The state is a tuple ``(x, Delta)`` solved by torchdiffeq's ``odeint``
(or scipy's ``solve_ivp`` as an independent reference).

``time_variable="log_snr"`` (``u = -lambda(t)``) or ``"sigma"`` (``u = s/m`` in the state
``y = x / m(t)``) solves the same transport against another variable
(:class:`~sde_diffusion.sdes.reverse.TimeChangedFlow`): the divergence is taken in the solved state
``y = x / c(t)``, and ``log p_eps(x) = log p_T(x_T) + Delta + D log(c(T) / c(eps))`` with
``x_T = c(T) y_T``. All three give the same density up to solver error; which needs the fewest
steps depends on the SDE (``benchmarks/results/speed.md``: sigma on VE, t on VP).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint

from .._checks import check_range
from .._shapes import check_data, flat_dim
from .._solvers import ODE_ADAPTIVE_ORDERS as ADAPTIVE_ORDERS
from ..scores import CountingScore
from ..sdes.base import SDE
from ..sdes.reverse import TimeChangedFlow
from ..types import ScoreFn
from .divergence import PROBES, basis_probes, jacobian_quadratic_forms, random_probes
from .scipy_backend import solve_ivp_reference

DIVERGENCES = ("exact", "hutchinson")
TIME_VARIABLES = ("t", "log_snr", "sigma")
"""The independent variable of the solve: the SDE's time, minus the log-SNR, or ``sigma = s/m``."""


@dataclass
class LikelihoodOutput:
    """Result of :func:`log_likelihood`.

    Attributes:
        logp: ``(B,)`` log-density in nats of the model's time-``eps`` marginal at the data,
            ``log p_T(x_T) + int_eps^T div f~ dt`` (the mean over probes for Hutchinson).
        latent: ``x_T``, the ODE's image of the data at ``t = T``, shape of the data.
        nfe: number of score evaluations (one per batched call) spent on the solve.
        logp_probes: Hutchinson only: ``(n_probes, B)``, one estimate of ``logp`` per probe.
        logp_stderr: Hutchinson with ``n_probes > 1`` only: ``(B,)`` standard error of ``logp``
            over probes, ``std(logp_probes) / sqrt(n_probes)`` (unbiased std).
    """

    logp: Tensor
    latent: Tensor
    nfe: int
    logp_probes: Tensor | None = None
    logp_stderr: Tensor | None = None


class AugmentedFlow:
    """Right-hand side ``(t, (x, Delta)) -> (v(t, x), div v(t, x))`` of the augmented ODE, for a
    velocity field ``v`` (the probability-flow ODE in ``t``, or its log-SNR form).

    ``probes`` ``(P, B, *dims)`` stay fixed through a solve: resampling them at every evaluation
    would make the field random, which adaptive step control cannot handle. With ``trace=True`` the
    probes are the coordinate basis and the ``P`` forms are summed into the exact divergence, so
    ``Delta`` is ``(1, B)``; otherwise ``Delta`` is ``(P, B)``, one Hutchinson estimate per probe
    (the ``x`` path does not depend on the probe, so it is shared by all of them).
    """

    def __init__(self, field: Callable[[Tensor, Tensor], Tensor], probes: Tensor, trace: bool):
        self.field = field
        self.probes = probes
        self.trace = trace

    def __call__(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        velocity, forms = jacobian_quadratic_forms(lambda x: self.field(t, x), state[0], self.probes)
        return velocity, forms.sum(0, keepdim=True) if self.trace else forms


def _solve_torchdiffeq(flow, state, t_span, method, rtol, atol, options):
    # adaptive steps would overshoot T and interpolate back; landing on T keeps the score inside [eps, T]
    landing = {"step_t": t_span[-1:]} if method in ADAPTIVE_ORDERS else {}
    options = {**landing, **(options or {})}
    x_path, delta_path = odeint(flow, state, t_span, rtol=rtol, atol=atol, method=method, options=options)
    return x_path[-1], delta_path[-1]


BACKENDS = {"torchdiffeq": _solve_torchdiffeq, "scipy": solve_ivp_reference}


def check_solve_options(*, eps, rtol, atol, probe, n_probes, backend, method, options, time_variable, T: float | None = None) -> None:
    """Refuse a solve's options (all but the divergence, whose name and probe count
    :func:`check_exact_probes` and the callers check) with a message naming the fix; ``eps < T``
    only when the SDE's ``T`` is given."""
    if time_variable not in TIME_VARIABLES:
        raise ValueError(f"time_variable must be one of {TIME_VARIABLES}, got {time_variable!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    check_range("n_probes", n_probes, low=0, low_open=True, integer=True)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
    if backend == "torchdiffeq" and method not in ADAPTIVE_ORDERS and "step_size" not in (options or {}):
        raise ValueError(
            f"method {method!r} is not one of torchdiffeq's adaptive methods {sorted(ADAPTIVE_ORDERS)}; "
            f"a fixed-grid method (euler, rk4, ...) needs options={{'step_size': ...}}"
        )
    check_range("eps", eps, low=0, high=T, high_open=True, hint="the reference value is 1e-5")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        check_range(name, tol, low=0, low_open=True, hint="the reference value is 1e-5")


def check_exact_probes(divergence: str, n_probes) -> None:
    """The exact divergence is deterministic: one "probe", the whole trace."""
    if divergence == "exact" and n_probes != 1:
        raise ValueError(
            f"n_probes={n_probes} applies to divergence='hutchinson' only; the exact divergence is "
            f"deterministic (leave n_probes=1 or choose divergence='hutchinson')"
        )


@torch.no_grad()
def log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    eps: float = 1e-5,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "exact",
    probe: str = "rademacher",
    n_probes: int = 1,
    backend: str = "torchdiffeq",
    generator: torch.Generator | None = None,
    options: dict[str, Any] | None = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    time_variable: str = "t",
) -> LikelihoodOutput:
    """Log-likelihood of data ``x`` under the probability-flow ODE of ``sde`` driven by ``score_fn``.

    Solves ``d/dt (x_t, Delta_t) = (f~, div f~)`` from ``t = eps`` to ``T`` (Song et al. 2021,
    App. D; Chen et al. 2018; Grathwohl et al. 2019) and returns
    ``log p_eps(x) = log p_T(x_T) + Delta_T`` in nats, with ``sde.prior_logp`` as ``log p_T``.

    Which density: ``x`` is treated as a sample at time ``eps``, so ``logp`` is the model's
    marginal ``p_eps`` at ``x`` (the density the ODE transports, not ``p_0``; ``p_eps -> p_0`` as
    ``eps -> 0``). With the exact score it equals the true ``log p_eps(x)`` up to solver error plus
    the prior mismatch ``log prior(x_T) - log p_T(x_T)``: the forward SDE's marginal at ``T`` is
    only close to its prior (1e-3 to 1e-2 nats/dim for the default VP and VE on a 2-D mixture).

    Args:
        sde: any SDE; only ``probability_flow`` (built from ``drift_and_diffusion_squared``: ``drift``
            and ``diffusion``, or a Gaussian path's rates derived once per evaluation), ``prior_logp``
            and ``T`` are used.
        score_fn: ``score(x, t) -> (B, *dims)`` for ``x`` ``(B, *dims)``, ``t`` ``(B,)``;
            differentiable in ``x``, samples must not interact (no batch statistics).
        x: data ``(B, *dims)``, float32 or float64; the solve runs in ``x``'s dtype and device.
        eps: start time of the solve.
        method, rtol, atol: the ODE solver and its tolerances (reference: dopri5, 1e-5, 1e-5).
            With ``backend="scipy"`` the method is a ``solve_ivp`` name (``dopri5`` means ``RK45``).
        divergence: ``"exact"`` (trace of the ``D x D`` Jacobian per sample, memory ``~ D^2 B``;
            for small ``D``) or ``"hutchinson"`` (``v^T J v``, one backward pass per probe).
        probe: Hutchinson probe distribution, ``"rademacher"`` or ``"gaussian"``.
        n_probes: Hutchinson probes per sample, each held fixed through the solve; the estimates
            are averaged and their standard error reported.
        backend: ``"torchdiffeq"`` (fast, batched, in torch) or ``"scipy"`` (reference).
        generator: seeds the Hutchinson probes.
        options: extra solver options (torchdiffeq ``options``, e.g. ``{"step_size": 0.01}`` for
            fixed-step methods; keyword arguments of ``solve_ivp`` for scipy).
        prior_logp: ``log p_T(z) -> (B,)`` used at ``T``; default ``sde.prior_logp`` (the model's
            density). Pass the true marginal at ``T`` when it is known, e.g.
            ``lambda z: mix.log_prob(z, sde.T, sde)`` for a Gaussian mixture, to get the true
            ``log p_eps(x)`` up to solver error alone.
        time_variable: ``"t"`` (the SDE's time), ``"log_snr"`` (minus the log-SNR) or ``"sigma"``
            (``s/m``, in the scaled state); the last two for SDEs with a kernel (module docstring).
            ``nfe`` counts the same score evaluations in all.
    Returns: :class:`LikelihoodOutput`. No gradients flow through the result.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    check_exact_probes(divergence, n_probes)
    check_solve_options(
        eps=eps, rtol=rtol, atol=atol, probe=probe, n_probes=n_probes, backend=backend, method=method, options=options,
        time_variable=time_variable, T=sde.T,
    )  # fmt: skip
    check_data(x, "x")
    exact = divergence == "exact"
    probes = basis_probes(x) if exact else random_probes(x, probe, int(n_probes), generator)
    score = CountingScore(score_fn)
    delta = x.new_zeros(1 if exact else int(n_probes), x.shape[0])
    solve = BACKENDS[backend]
    if time_variable == "t":
        t_span = torch.tensor([eps, sde.T], dtype=x.dtype, device=x.device)
        latent, delta = solve(
            AugmentedFlow(sde.probability_flow(score), probes, trace=exact), (x, delta), t_span, method, rtol, atol, options
        )
    else:
        flow = TimeChangedFlow(sde, score, time_variable)
        ends = torch.tensor([eps, sde.T], dtype=torch.float64)
        c_eps, c_T = flow.scale(ends).tolist()
        u_span = flow.u(ends).to(dtype=x.dtype, device=x.device)
        y_T, delta = solve(AugmentedFlow(flow, probes, trace=exact), (x / c_eps, delta), u_span, method, rtol, atol, options)
        latent = c_T * y_T
        delta = delta + flat_dim(x) * (math.log(c_T) - math.log(c_eps))
    logp_probes = (sde.prior_logp if prior_logp is None else prior_logp)(latent) + delta  # (P, B)
    logp = logp_probes.mean(0)
    if exact:
        return LikelihoodOutput(logp, latent, score.nfe)
    stderr = logp_probes.std(0) / math.sqrt(n_probes) if n_probes > 1 else None
    return LikelihoodOutput(logp, latent, score.nfe, logp_probes, stderr)
