"""iPNDM (Zhang & Chen 2023, App. B, "improved PNDM"): explicit Adams-Bashforth multistep on EDM's
probability-flow ODE ``dy/dsigma = eps_hat`` in ``sigma = s/m``, ``y = x/m`` (Karras et al. 2022,
Eq. 4), for any Gaussian-kernel SDE.

With the noise predictions ``d_j = eps_hat(x_j, t_j)`` and ``Delta = sigma_{i+1} - sigma_i``, a step of
order ``k`` is ``y_{i+1} = y_i + Delta sum_j c_j d_{i-j}``, ``j = 0 .. k-1``; the first steps warm up
with the orders their history allows (no extra NFE, unlike PNDM's Runge-Kutta start).

``coefficients="fixed"`` uses the constant-step Adams-Bashforth weights of iPNDM, (1), (3, -1)/2,
(23, -16, 5)/12, (55, -59, 37, -9)/24, which are exact only on grids uniform in ``sigma``;
``"variable"`` integrates the Lagrange polynomial through the actual nodes ``sigma_{i-j}`` over
``[sigma_i, sigma_{i+1}]`` (variable-step Adams-Bashforth, Hairer, Norsett & Wanner 1993, III.5),
which keeps order ``k`` on any grid and equals the fixed weights on uniform ones.
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

FIXED_WEIGHTS = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
COEFFICIENTS = ("fixed", "variable")
_GAUSS_NODES, _GAUSS_WEIGHTS = (torch.tensor(v, dtype=torch.float64) for v in zip(
    *[(-0.8611363115940526, 0.3478548451374538), (-0.3399810435848563, 0.6521451548625461),
      (0.3399810435848563, 0.6521451548625461), (0.8611363115940526, 0.3478548451374538)], strict=True))  # fmt: skip
"""4-point Gauss-Legendre rule on [-1, 1]: exact for the cubic Lagrange polynomials of order 4."""


def variable_weights(nodes: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Adams-Bashforth weights ``c_j = (1 / (b - a)) int_a^b L_j(u) du`` ``(k,)`` for the Lagrange
    basis ``L_j`` through ``nodes`` ``(k,)`` (float64), ``nodes[0] = a`` the current point."""
    u = 0.5 * (b - a) * _GAUSS_NODES + 0.5 * (a + b)  # quadrature points in [a, b]
    k = len(nodes)
    weights = []
    for j in range(k):
        basis = torch.ones_like(u)
        for l in range(k):  # noqa: E741
            if l != j:
                basis = basis * (u - nodes[l]) / (nodes[j] - nodes[l])
        weights.append(0.5 * (basis * _GAUSS_WEIGHTS).sum())
    return torch.stack(weights)


class IPNDMStep(Step):
    """iPNDM of order up to ``order`` (1 to 4); see the module docstring. NFE 1 a step."""

    def __init__(self, order: int = 4, coefficients: str = "variable"):
        order = check_range("order", order, low=1, high=4, integer=True, hint="iPNDM uses 4")
        if coefficients not in COEFFICIENTS:
            raise ValueError(f"coefficients must be one of {', '.join(COEFFICIENTS)}, got {coefficients!r}")
        self.order = self.max_order = order
        self.coefficients = coefficients
        self.name = f"ipndm-{order}"

    def start(self, solve: Solve) -> None:
        m, s, _ = solve.tables()
        self.sigma = s / m
        self.sigma64 = s.to(torch.float64) / m.to(torch.float64)
        self.eps_hats: list[Tensor] = []

    def _weights(self, i: int, k: int, like: Tensor) -> list[Tensor]:
        if self.coefficients == "fixed":
            return [torch.tensor(c, dtype=like.dtype, device=like.device) for c in FIXED_WEIGHTS[k]]
        sigma = self.sigma64
        return list(variable_weights(sigma[i - k + 1 : i + 1].flip(0), sigma[i], sigma[i + 1]).to(like).unbind())

    def step(self, solve, i, x, order_cap):
        m, _, _ = solve.tables()
        pred = solve.predict_at(x, i)
        assert pred.eps is not None
        self.eps_hats = [*self.eps_hats[-(self.max_order - 1) :], pred.eps] if self.max_order > 1 else [pred.eps]
        k = min(self.max_order, len(self.eps_hats), order_cap)
        weights = self._weights(i, k, x)
        slope = sum(c * d for c, d in zip(weights, reversed(self.eps_hats[-k:]), strict=True))
        y_next = x / m[i] + (self.sigma[i + 1] - self.sigma[i]) * slope
        return m[i + 1] * y_next, pred.x0


@runs(IPNDMStep())
def ipndm(
    sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, *, order: int = 4, coefficients: str = "variable", **driver: Any
) -> SamplerOutput:
    """iPNDM (Zhang & Chen 2023), see :class:`IPNDMStep`; meant for :func:`sde_diffusion.timesteps.edm_time_grid`.

    ``ipndm.order`` is the default's order, reached on grids uniform in ``sigma`` (fixed weights) or
    on any grid (``coefficients="variable"``).

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)`` ending at ``eps > 0``.
        order: the highest Adams-Bashforth order, 1 to 4.
        coefficients: ``fixed`` (iPNDM's) or ``variable`` (the actual steps').
        driver: ``generator``, ``progress``, ``callback``, ``x0_correction``, ``denoise_to_zero``,
            ``lower_order_final`` of :func:`~sde_diffusion.samplers.driver.sample_on_grid`.
    Returns: samples at ``ts[-1]``, NFE = N (+ 1 with ``denoise_to_zero``).
    """
    return sample_on_grid(IPNDMStep(order, coefficients), sde, score_fn, x, ts, **driver)
