"""DPM-Solver++ (Lu et al. 2022b): exponential integrators of the probability-flow ODE (and of the
reverse SDE) in the data prediction, for any Gaussian-kernel SDE.

Notation of the paper, written with the kernel ``x_t = m(t) x_0 + s(t) eps`` (``alpha = m``,
``sigma = s``): ``lambda = log(m / s)`` (half the log-SNR), ``h_i = lambda_{i+1} - lambda_i > 0``,
``x0_i`` the data prediction at ``(x_i, t_i)``. Exact integration of the ODE with ``x0`` constant
over the step gives the first-order update (Lu et al. 2022b, Eq. 9; DDIM with eta = 0)

    x_{i+1} = (s_{i+1} / s_i) x_i - m_{i+1} phi_1 x0_i,     phi_1 = expm1(-h_i),

and the multistep methods add finite differences of earlier data predictions in ``lambda``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._checks import check_range
from ..sdes.base import SDE
from ..types import ScoreFn
from .base import SamplerOutput
from .driver import Solve, Step, runs, sample_on_grid

PREDICTIONS = ("data", "noise")


def _exp_weights(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``E_0 = e^z - 1``, ``E_1 = (E_0 - z) / z``, ``E_2 = (E_0 - z - z^2/2) / z^2`` (float64 ``z``):
    the exact integrals of ``e^u`` against ``1``, ``u / z`` and ``u^2 / z^2`` over the step."""
    e0 = torch.expm1(z)
    return e0, (e0 - z) / z, (e0 - z - 0.5 * z**2) / z**2


class DPMSolverMultistep(Step):
    """Multistep exponential integrators of orders 1 to 3 in the data prediction, DPM-Solver++(1),
    (2M), (3M) (Lu et al. 2022b, Alg. 2 and App. B), or in the noise prediction, DPM-Solver (Lu et al.
    2022a, multistep variant; DEIS, Zhang & Chen 2023, is the same integral of the interpolating
    polynomial).

    With ``f`` the prediction (``x0_hat`` or ``eps_hat``), ``r0 = h_{i-1} / h_i``, ``r1 = h_{i-2} / h_i``
    and the scaled differences ``D1_0 = (f_i - f_{i-1}) / r0``, ``D1_1 = (f_{i-1} - f_{i-2}) / r1``,
    ``D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) ~ h f'`` and ``D2 = 2 (D1_0 - D1_1) / (r0 + r1) ~ h^2 f''``,
    the step integrates the Taylor polynomial of ``f`` in ``lambda`` exactly:

        x_{i+1} = A x_i - c [E_0(z) f_i + E_1(z) D1 + E_2(z) D2]

    with ``(A, c, z) = (s_{i+1} / s_i, m_{i+1}, -h)`` for data and ``(m_{i+1} / m_i, s_{i+1}, h)`` for
    noise (:func:`_exp_weights`). Order 3 uses all three terms, so its step is exact when ``f`` is
    quadratic in ``lambda`` (with ``D2`` half as large, as some implementations write it, the ``f''``
    term is halved and the method is second order); order 2 uses Lu et al.'s midpoint form
    ``- c E_0(z) D1_0 / 2`` (Alg. 2); order 1 is DDIM. The first steps, without enough history, use the
    highest order they can (so 3M's second step is 2M's); by default the driver lowers the order on
    the last steps of short grids in the data prediction, not in the noise prediction.
    """

    needs_kernel = True

    def __init__(self, order: int = 2, prediction: str = "data"):
        order = check_range("order", order, low=1, high=3, integer=True, hint="1: DPM-Solver++(1) = DDIM, 2: 2M, 3: 3M")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be 'data' (DPM-Solver++) or 'noise' (DPM-Solver, DEIS), got {prediction!r}")
        self.order = self.max_order = order
        self.prediction = prediction
        # Measured on exact-score mixtures at 10 NFE (benchmarks/fast_samplers.py): lowering the
        # order of the last steps keeps the data-prediction 3M stable (without it the 2-D ring's
        # gap is -7.4 nats/dim) but costs the noise-prediction 3M (worst gap over six settings 0.093
        # with it, 0.035 without).
        self.lower_order_final = prediction == "data"
        plus = "++" if prediction == "data" else ""
        self.name = f"dpm-solver{plus}({order}{'M' if order > 1 else ''})"

    def start(self, solve: Solve) -> None:
        self.history: list[Tensor] = []

    def step(self, solve, i, x, order_cap):
        m, s, _ = solve.tables()
        lam = solve.lam64
        assert lam is not None
        pred = solve.predict_at(x, i)
        f = pred.x0 if self.prediction == "data" else pred.eps
        assert f is not None
        self.history = [*self.history[-(self.max_order - 1) :], f] if self.max_order > 1 else [f]
        k = min(self.max_order, len(self.history), order_cap)
        h = lam[i + 1] - lam[i]
        if self.prediction == "data":
            a, c, z = s[i + 1] / s[i], m[i + 1], -h
        else:
            a, c, z = m[i + 1] / m[i], s[i + 1], h
        e0, e1, e2 = (w.to(x) for w in _exp_weights(z))
        update = e0 * f
        if k >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1_0 = (f - self.history[-2]) / r0.to(x)
            if k == 2:
                update = update + 0.5 * e0 * d1_0
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                d1_1 = (self.history[-2] - self.history[-3]) / r1.to(x)
                d1 = d1_0 + (r0 / (r0 + r1)).to(x) * (d1_0 - d1_1)
                d2 = (2.0 / (r0 + r1)).to(x) * (d1_0 - d1_1)
                update = update + e1 * d1 + e2 * d2
        return a * x - c * update, pred.x0


class DPMSolverSinglestep2S(Step):
    """DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1, ``r = 1/2``): a midpoint step in ``lambda``.

    ``u = (s_mid / s_i) x_i - m_mid expm1(-h/2) x0_i`` at ``lambda_mid = lambda_i + h/2``, then the
    first-order update from ``x_i`` with ``x0(u, t_mid)`` in place of ``x0_i``. Second order, 2 NFE a step.
    """

    order = 2
    name = "dpm-solver++(2S)"

    def start(self, solve: Solve) -> None:
        _, _, lam = solve.tables()
        lam_mid = (0.5 * (lam[:-1] + lam[1:])).to(torch.float64)
        self.t_mid = solve.sde.time_from_log_snr(2.0 * lam_mid, float(solve.ts[-1])).to(solve.ts)
        m_mid, s_mid = solve.sde.kernel(self.t_mid.to(torch.float64))
        self.m_mid, self.s_mid = m_mid.to(lam), s_mid.to(lam)

    def step(self, solve, i, x, order_cap):
        m, s, lam = solve.tables()
        x0 = solve.predict_at(x, i).x0
        assert x0 is not None
        h = lam[i + 1] - lam[i]
        u = (self.s_mid[i] / s[i]) * x - self.m_mid[i] * torch.expm1(-0.5 * h) * x0
        x0_mid = solve.predict(u, self.t_mid[i], (self.m_mid[i], self.s_mid[i])).x0
        return (s[i + 1] / s[i]) * x - m[i + 1] * torch.expm1(-h) * x0_mid, x0_mid


class DPMSolverSDE(Step):
    """SDE-DPM-Solver++(1) and (2M) (Lu et al. 2022b, Sec. 5 and App. E): the reverse SDE
    ``dx = [f - g^2 score] dt + g dw_bar``, written in ``lambda`` and integrated exactly in its linear part.

    ``x_{i+1} = (s_{i+1} / s_i) e^{-h} x_i + m_{i+1} (1 - e^{-2h}) (x0_i + D1_0 / 2) + s_{i+1} sqrt(1 - e^{-2h}) z``
    with ``D1_0`` as in :class:`DPMSolverMultistep` (dropped at order 1 and on the first step).
    The noise is exact for the linear part; weak order 1 (the declared ``order``), with the
    second-order term reducing the error constant on smooth data predictions.
    """

    order = 1

    def __init__(self, order: int = 2):
        self.max_order = check_range("order", order, low=1, high=2, integer=True, hint="2: SDE-DPM-Solver++(2M)")
        self.name = f"sde-dpm-solver++({self.max_order}{'M' if self.max_order > 1 else ''})"

    def start(self, solve: Solve) -> None:
        self.x0_prev: Tensor | None = None

    def step(self, solve, i, x, order_cap):
        m, s, lam = solve.tables()
        x0 = solve.predict_at(x, i).x0
        assert x0 is not None
        h = lam[i + 1] - lam[i]
        one_minus = -torch.expm1(-2.0 * h)  # 1 - e^{-2h}
        d = x0
        if self.max_order == 2 and self.x0_prev is not None and order_cap >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d = x0 + 0.5 * (x0 - self.x0_prev) / r0
        self.x0_prev = x0
        x_next = (s[i + 1] / s[i]) * torch.exp(-h) * x + m[i + 1] * one_minus * d
        return x_next + s[i + 1] * one_minus.sqrt() * solve.randn_like(x), x0


@runs(DPMSolverMultistep())
def dpm_solver_pp(
    sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, *, order: int = 2, prediction: str = "data", **driver: Any
) -> SamplerOutput:
    """DPM-Solver++(1), (2M) or (3M) (Lu et al. 2022b), or with ``prediction="noise"`` the multistep
    DPM-Solver (Lu et al. 2022a), see :class:`DPMSolverMultistep`.

    Meant for :func:`sde_diffusion.timesteps.log_snr_time_grid` (and EDM's grid for
    ``prediction="noise"``). ``dpm_solver_pp.order`` is the default's order.

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)`` ending at ``eps > 0``.
        order: 1, 2 or 3.
        prediction: ``data`` (DPM-Solver++) or ``noise`` (DPM-Solver).
        driver: ``generator``, ``progress``, ``callback``, ``x0_correction``, ``denoise_to_zero``,
            ``lower_order_final`` of :func:`~sde_diffusion.samplers.driver.sample_on_grid`.
    Returns: samples at ``ts[-1]``, NFE = N (+ 1 with ``denoise_to_zero``).
    """
    return sample_on_grid(DPMSolverMultistep(order, prediction), sde, score_fn, x, ts, **driver)


@runs(DPMSolverSinglestep2S())
def dpm_solver_2s(sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, **driver: Any) -> SamplerOutput:
    """DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1), see :class:`DPMSolverSinglestep2S`.

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)`` ending at ``eps > 0``.
        driver: ``generator``, ``progress``, ``callback``, ``x0_correction``, ``denoise_to_zero``,
            ``lower_order_final`` of :func:`~sde_diffusion.samplers.driver.sample_on_grid`.
    Returns: samples at ``ts[-1]``, NFE = 2 N (+ 1 with ``denoise_to_zero``).
    """
    return sample_on_grid(DPMSolverSinglestep2S(), sde, score_fn, x, ts, **driver)


@runs(DPMSolverSDE())
def dpm_solver_sde(sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, *, order: int = 2, **driver: Any) -> SamplerOutput:
    """SDE-DPM-Solver++(2M) (or (1) with ``order=1``), see :class:`DPMSolverSDE`; stochastic.

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)`` ending at ``eps > 0``.
        order: 1 or 2.
        driver: ``generator``, ``progress``, ``callback``, ``x0_correction``, ``denoise_to_zero``,
            ``lower_order_final`` of :func:`~sde_diffusion.samplers.driver.sample_on_grid`.
    Returns: samples at ``ts[-1]``, NFE = N (+ 1 with ``denoise_to_zero``).
    """
    return sample_on_grid(DPMSolverSDE(order), sde, score_fn, x, ts, **driver)
