"""UniPC (Zhao et al. 2023): a unified predictor (UniP) and corrector (UniC) in the data
prediction, for any Gaussian-kernel SDE.

Notation as in :mod:`sde_diffusion.samplers.dpm_solver`: ``lambda = log(m / s)``, ``x0_j`` the data
prediction at grid time ``t_j``. A step of order ``p`` from ``t_i`` to ``t_{i+1}`` with
``h = lambda_{i+1} - lambda_i`` uses the earlier predictions at ``r_k = (lambda_{i-k} - lambda_i) / h``
through ``D_k = (x0_{i-k} - x0_i) / r_k`` (Zhao et al. 2023, Alg. 2, data prediction):

    x_{i+1} = (s_{i+1} / s_i) x_i - m_{i+1} phi_1 x0_i - m_{i+1} B(h) sum_k rho_k D_k,   phi_1 = expm1(-h),

with ``rho`` solving ``R rho = g`` for the Vandermonde matrix ``R_{nk} = r_k^(n-1)`` and
``g_n = n! psi_n / B(h)``, ``psi_1 = phi_1 / (-h) - 1``, ``psi_{n+1} = psi_n / (-h) - 1 / (n+1)!``
(the Taylor coefficients of the exact integral). ``B(h) = -h`` (``bh1``) or ``expm1(-h)`` (``bh2``).
UniC re-does the step just taken with the new prediction ``x0_{i+1}`` as one more node
(``r = 1``), at no extra NFE, and raises the order by one (Zhao et al. 2023, Thm. 3.1).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._checks import check_range
from ..sdes.base import SDE
from ..types import ScoreFn
from .base import SamplerOutput
from .dpm_solver import PREDICTIONS
from .driver import Solve, Step, runs, sample_on_grid

VARIANTS = ("bh1", "bh2")


def _coefficients(hh: Tensor, r: Tensor, variant: str, full: bool) -> tuple[Tensor, Tensor]:
    """``(rho, B)`` for the signed step ``hh`` (``-h`` for the data prediction, ``h`` for the noise
    prediction) and nodes ``r`` ``(p,)`` (float64). ``full``: solve the ``p x p`` system (the
    corrector, whose last node is ``r = 1``); else the ``(p-1) x (p-1)`` one of the predictor over
    ``r[:-1]``. Order-2 predictor and order-1 corrector use Zhao et al.'s ``rho = 1/2``."""
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    p = len(r)
    psi = torch.expm1(hh) / hh - 1.0
    g = []
    for n in range(1, p + 1):
        g.append(psi * math.factorial(n) / b_h)
        psi = psi / hh - 1.0 / math.factorial(n + 1)
    size = p if full else p - 1
    if size == 0:
        return torch.zeros(0, dtype=torch.float64), b_h
    if size == 1:
        return torch.tensor([0.5], dtype=torch.float64), b_h
    vander = torch.stack([r[:size] ** n for n in range(size)])
    return torch.linalg.solve(vander, torch.stack(g[:size])), b_h


class UniPCStep(Step):
    """UniPC-``p`` with the UniC corrector (Zhao et al. 2023, Alg. 2 and 3); see the module docstring.

    The prediction ``x0_i`` at ``x_i`` (from the previous predictor step) first corrects ``x_i`` by UniC
    (then ``x0_i`` is kept as evaluated), and UniP steps from the corrected state. The final state is
    not corrected (that would cost one more NFE). Declared order ``p + 1`` with the corrector, ``p``
    without.
    """

    def __init__(self, order: int = 2, variant: str = "bh2", corrector: bool = True, prediction: str = "data"):
        order = check_range("order", order, low=1, high=3, integer=True, hint="UniPC-p; 2 for guided sampling, 3 unconditional")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)} (B(h) = h or e^h - 1), got {variant!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be 'data' or 'noise', got {prediction!r}")
        self.max_order, self.variant, self.corrector, self.prediction = order, variant, bool(corrector), prediction
        self.order = order + 1 if corrector else order
        self.name = f"unipc-{order}-{variant}{'' if corrector else ' (no UniC)'}{'' if prediction == 'data' else ' (noise)'}"

    def start(self, solve: Solve) -> None:
        self.preds: list[Tensor] = []
        self.last: tuple[Tensor, int] | None = None  # the previous step's start state and order
        assert solve.lam64 is not None
        self.lam64 = solve.lam64

    def _update(self, solve: Solve, i: int, x: Tensor, nodes: list[Tensor], new: Tensor | None, order: int) -> Tensor:
        """The step from ``t_i`` to ``t_{i+1}`` of ``order`` from ``x`` with the predictions
        ``nodes = [f_{i-p+1}, ..., f_i]``; with ``new`` (the prediction at ``t_{i+1}``) it is the UniC
        corrector, else UniP."""
        m, s, _ = solve.tables()
        lam = self.lam64
        h = lam[i + 1] - lam[i]
        if self.prediction == "data":
            a, c, hh = s[i + 1] / s[i], m[i + 1], -h
        else:
            a, c, hh = m[i + 1] / m[i], s[i + 1], h
        f = nodes[-1]
        past = [(lam[i - k] - lam[i]) / h for k in range(1, order)]
        r = torch.stack([*past, torch.ones((), dtype=torch.float64)])
        rho, b_h = _coefficients(hh, r, self.variant, full=new is not None)
        rho, b_h = rho.to(x), b_h.to(x)
        diffs = [(nodes[-1 - k] - f) / r[k - 1].to(x) for k in range(1, order)]
        if new is not None:
            diffs.append(new - f)
        x_next = a * x - c * torch.expm1(hh).to(x) * f
        if diffs:
            x_next = x_next - c * b_h * sum(rho[k] * d for k, d in enumerate(diffs))
        return x_next

    def step(self, solve, i, x, order_cap):
        pred = solve.predict_at(x, i)
        f = pred.x0 if self.prediction == "data" else pred.eps
        assert f is not None
        if self.corrector and self.last is not None:
            x_prev, order_prev = self.last
            x = self._update(solve, i - 1, x_prev, self.preds, f, order_prev)
        self.preds = [*self.preds[-(self.max_order - 1) :], f] if self.max_order > 1 else [f]
        order = min(self.max_order, len(self.preds), order_cap)
        self.last = (x, order)
        return self._update(solve, i, x, self.preds, None, order), pred.x0


@runs(UniPCStep())
def unipc(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    prediction: str = "data",
    **driver: Any,
) -> SamplerOutput:
    """UniPC-``order`` with B(h) ``variant`` and the UniC corrector (Zhao et al. 2023), see :class:`UniPCStep`.

    Meant for :func:`sde_diffusion.timesteps.log_snr_time_grid`; ``unipc.order`` is the default's
    convergence order (UniPC-2 with UniC: 3).

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)`` ending at ``eps > 0``.
        order: the predictor's order 1, 2 or 3.
        variant: ``bh1`` (``B(h) = h``, Zhao et al. recommend it for unconditional sampling at
            very few steps) or ``bh2`` (``B(h) = e^h - 1``, for guided sampling).
        corrector: apply UniC (free: no extra NFE).
        prediction: ``data`` (UniPC's default) or ``noise``.
        driver: ``generator``, ``progress``, ``callback``, ``x0_correction``, ``denoise_to_zero``,
            ``lower_order_final`` of :func:`~sde_diffusion.samplers.driver.sample_on_grid`.
    Returns: samples at ``ts[-1]``, NFE = N (+ 1 with ``denoise_to_zero``).
    """
    return sample_on_grid(UniPCStep(order, variant, corrector, prediction), sde, score_fn, x, ts, **driver)
