"""One driver loop for every fixed-grid sampler, and the step objects it runs.

A fixed-grid sampler is a :class:`Step`: it declares its ``order``, keeps its own state (the
previous data predictions of a multistep method) and moves the state from ``ts[i]`` to
``ts[i + 1]``. :func:`sample_on_grid` owns everything else, once: the grid check, the kernel table,
NFE counting, the progress bar, the per-step callback ``(i, t, x, x0_hat)``, the ``x0`` correction
hook (thresholding, inpainting) and the last-step rules (lower-order final steps of multistep
methods, and ``denoise_to_zero``, the data prediction at the last time). A step is itself a sampler
with the shared signature, ``step(sde, score_fn, x, ts, **options)``, which runs it on the driver;
the sampler functions (:func:`~sde_diffusion.samplers.ddim`, ...) are named shortcuts for their
steps (:func:`runs`), and :func:`on_driver` tells either apart from samplers off the driver.

Steps see the model only through :meth:`Solve.predict`, which evaluates the score once and returns
the three equivalent predictions of the Gaussian kernel ``x_t = m(t) x_0 + s(t) eps`` by the SDE's
conversions: Tweedie's ``x0_hat = (x + s^2 score) / m`` (:meth:`~sde_diffusion.sdes.SDE.x0_from_score`),
``eps_hat = -s score`` (:meth:`~sde_diffusion.sdes.SDE.eps_from_score`) and the score itself. When an
``x0`` correction is set, it changes ``x0_hat`` and the other two are derived from the corrected
``x0_hat`` (:meth:`~sde_diffusion.sdes.SDE.eps_from_x0`, :meth:`~sde_diffusion.sdes.SDE.score_from_eps`),
so every sampler, first-order or multistep, stochastic or not, sees the same corrected model.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, cast, overload

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._noise import NoiseSource, randn_like
from .._shapes import batch_time
from ..scores import CountingScore
from ..sdes.base import SDE
from ..sdes.tables import kernel_table
from ..timesteps import check_grid
from ..types import ScoreFn
from .base import OrderedSampler, SamplerOutput

P = ParamSpec("P")
X0Correction = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``correct(x0_hat, x, t) -> x0_hat'``: shapes ``(B, *dims)``, ``(B, *dims)``, ``(B,)``."""
Callback = Callable[[int, float, Tensor, Tensor | None], None]
"""``callback(i, t, x, x0_hat)`` after step ``i``: ``x`` at time ``t``, the step's last data prediction."""

LOWER_ORDER_FINAL_BELOW = 15
"""Multistep methods lower their order on the last steps of grids shorter than this (Lu et al.
2022b, App. D: with fewer than 15 steps the high-order final steps are unstable)."""


@dataclass
class Prediction:
    """The model's three predictions at ``(x, t)``, consistent with each other: ``x0`` and
    ``eps`` ``(B, *dims)`` (None without a kernel) and ``score`` ``(B, *dims)``; ``variance``, the
    learned variance interpolation ``v`` ``(B, *dims)`` when it was asked for."""

    x0: Tensor | None
    eps: Tensor | None
    score: Tensor
    variance: Tensor | None = None


class Solve:
    """What a step sees during one solve: the SDE, the grid and its kernel table, the model, the noise.

    Attributes:
        sde, ts: the SDE and the grid ``(N + 1,)``; ``n = N`` steps.
        m, s, lam: ``m(ts)``, ``s(ts)`` and ``lambda = log(m / s) = logSNR / 2``, each ``(N + 1,)``
            in the state's dtype (None when the SDE has no kernel); ``lam64``: ``lambda`` in float64,
            for step coefficients that cancel (``expm1(h) - h``).
        score: the counting score; ``score.nfe`` is the solve's NFE.
        generator: the noise source (:mod:`sde_diffusion._noise`).
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, generator: NoiseSource, x0_correction: X0Correction | None):
        self.sde, self.ts, self.n = sde, ts, len(ts) - 1
        self.score = CountingScore(score_fn)
        self.generator = generator
        self.x0_correction = x0_correction
        self.m = self.s = self.lam = self.lam64 = None
        if sde.has_kernel and ts[-1] > 0:
            m, s, log_snr = kernel_table(sde, ts, x, "sample_on_grid")
            self.m, self.s, self.lam = m, s, 0.5 * log_snr
            self.lam64 = 0.5 * sde.log_snr(ts.to(torch.float64))

    def kernel_at(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(m(t), s(t))`` of any time, as 0-d tensors in ``like``'s dtype (computed in float64)."""
        m, s = self.sde.kernel(torch.as_tensor(t, dtype=torch.float64))
        return m.to(like), s.to(like)

    def predict(self, x: Tensor, t: float | Tensor, kernel: tuple[Tensor, Tensor] | None = None, *, variance: bool = False) -> Prediction:
        """One score evaluation at ``(x, t)`` as a :class:`Prediction`, corrected by the ``x0`` hook.

        ``kernel``: ``(m(t), s(t))`` when the caller has them (grid times), else they are computed.
        ``variance``: also return the model's learned variance interpolation (the model is called as
        ``score_fn(x, t, variance=True)``, :class:`~sde_diffusion.models.LearnedVarianceParameterization`).
        """
        t_batch = batch_time(t, x)
        interp = None
        if variance:
            try:
                score, interp = self.score(x, t_batch, variance=True)
            except TypeError:
                raise ValueError(
                    "variance='learned' needs a model with learned variances (model=unet_learned_variance or "
                    "mlp_learned_variance); variance='large' and 'small' need none"
                ) from None
        else:
            score = self.score(x, t_batch)
        if not self.sde.has_kernel:
            return Prediction(None, None, score, interp)
        kernel = kernel if kernel is not None else self.kernel_at(t_batch[0], x)
        sde = self.sde
        x0 = sde.x0_from_score(x, score, t_batch, kernel=kernel)
        if self.x0_correction is None:
            return Prediction(x0, sde.eps_from_score(score, t_batch, kernel=kernel), score, interp)
        x0 = self.x0_correction(x0, x, t_batch)
        eps = sde.eps_from_x0(x, x0, t_batch, kernel=kernel)
        return Prediction(x0, eps, sde.score_from_eps(eps, t_batch, kernel=kernel), interp)

    def predict_at(self, x: Tensor, i: int, *, variance: bool = False) -> Prediction:
        """:meth:`predict` at the grid time ``ts[i]``, with the tabulated kernel."""
        kernel = (self.m[i], self.s[i]) if self.m is not None and self.s is not None else None
        return self.predict(x, self.ts[i], kernel, variance=variance)

    def model_score(self, x: Tensor, t: Tensor) -> Tensor:
        """The score as a plain ``score(x, t)`` for steps written with it (predictors, correctors):
        the model's, or the one implied by the corrected ``x0_hat`` when a correction is set."""
        if self.x0_correction is None:
            return self.score(x, t)
        return self.predict(x, t).score

    def randn_like(self, x: Tensor) -> Tensor:
        """The next standard normal draw shaped like ``x``, from the solve's noise source."""
        return randn_like(x, self.generator)

    def tables(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(m, s, lam)`` for steps that need the kernel (checked by the driver before the first step)."""
        assert self.m is not None and self.s is not None and self.lam is not None
        return self.m, self.s, self.lam


class Step(abc.ABC):
    """One step of a fixed-grid sampler, from ``ts[i]`` to ``ts[i + 1]``.

    Subclasses set ``order`` (the convergence order as data: weak order for stochastic steps),
    ``needs_kernel`` and ``name``; :meth:`start` resets the state for a new solve; :meth:`step`
    returns the new state and the data prediction it formed (None without a kernel). ``order_cap``
    is the highest order the driver allows for this step (lower on the final steps of short grids).
    Calling the step, ``step(sde, score_fn, x, ts, **options)``, samples with it:
    :func:`sample_on_grid` with the driver's ``options``.
    """

    order: float = 1
    needs_kernel: bool = True
    name: str = "step"
    lower_order_final: bool = True
    """The step's default for the driver's ``lower_order_final`` (used when the caller passes None)."""
    denoise_to_zero: bool = False
    """The step's default for the driver's ``denoise_to_zero`` (used when the caller passes None)."""

    def start(self, solve: Solve) -> None:  # noqa: B027 (an optional hook: stateless steps need none)
        """Reset per-solve state (history) and precompute per-grid tables."""

    @abc.abstractmethod
    def step(self, solve: Solve, i: int, x: Tensor, order_cap: int) -> tuple[Tensor, Tensor | None]:
        """Move ``x`` ``(B, *dims)`` from ``solve.ts[i]`` to ``solve.ts[i + 1]``."""

    def __call__(self, sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, **options: Any) -> SamplerOutput:
        """Sample with this step: ``sample_on_grid(self, sde, score_fn, x, ts, **options)``."""
        return sample_on_grid(self, sde, score_fn, x, ts, **options)


@torch.no_grad()
def sample_on_grid(
    step: Step,
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: NoiseSource = None,
    progress: bool = False,
    callback: Callback | None = None,
    x0_correction: X0Correction | None = None,
    denoise_to_zero: bool | None = None,
    lower_order_final: bool | None = None,
) -> SamplerOutput:
    """Run ``step`` over the decreasing grid ``ts`` from the prior samples ``x`` ``(B, *dims)`` at ``ts[0]``.

    Args:
        generator: a ``torch.Generator`` (noise per batch), a
            :class:`~sde_diffusion._noise.PerSampleNoise` (noise per sample) or None.
        callback: called after every step as ``callback(i, t, x, x0_hat)``.
        x0_correction: ``correct(x0_hat, x, t)`` applied to every data prediction (thresholding,
            inpainting); needs an SDE with a kernel.
        denoise_to_zero: after the last step, return the data prediction ``x0_hat`` at ``ts[-1]``
            (Tweedie's ``E[x_0 | x_eps]``; one more NFE), i.e. finish at ``t = 0``; else stop at
            ``ts[-1]``. None takes the step's own default (``step.denoise_to_zero``: False but for
            DDPM's chain, whose last step is noiseless, and predictor-corrector with ``denoise``).
        lower_order_final: on grids of fewer than 15 steps, step ``i`` of a multistep method uses at
            most order ``N - i`` (Lu et al. 2022b, App. D); None takes the step's own default
            (``step.lower_order_final``: True but for the noise-prediction multistep DPM-Solver).
    Returns: samples ``(B, *dims)`` at ``ts[-1]`` (or ``t = 0`` with ``denoise_to_zero``) and the NFE.
    """
    check_grid(ts)
    if denoise_to_zero is None:
        denoise_to_zero = step.denoise_to_zero
    needs = [
        what
        for needed, what in (
            (step.needs_kernel, step.name),
            (x0_correction is not None, "x0_correction (thresholding, inpainting)"),
            (denoise_to_zero, "denoise_to_zero"),
        )
        if needed
    ]
    if needs:
        kernel_table(sde, ts, x, needs[0])  # the errors for a missing kernel or a grid ending at t = 0
    solve = Solve(sde, score_fn, x, ts, generator, x0_correction)
    step.start(solve)
    n = solve.n
    if lower_order_final is None:
        lower_order_final = step.lower_order_final
    for i in tqdm(range(n), disable=not progress, desc=step.name, leave=False):
        cap = n - i if lower_order_final and n < LOWER_ORDER_FINAL_BELOW else n
        x, x0_hat = step.step(solve, i, x, cap)
        if callback is not None:
            callback(i, float(ts[i + 1]), x, x0_hat)
    if denoise_to_zero:
        x0 = solve.predict_at(x, n).x0
        assert x0 is not None
        x = x0
        if callback is not None:
            callback(n, 0.0, x, x)
    return SamplerOutput(x, solve.score.nfe)


class GridSampler(Protocol[P]):
    """A sampler function that runs a :class:`Step` on the driver (:func:`runs`): ``step_type`` is
    the class of its steps."""

    step_type: type[Step]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> SamplerOutput: ...


class OrderedGridSampler(GridSampler[P], OrderedSampler[P], Protocol[P]):
    """A :class:`GridSampler` with the ``order`` of its default step."""


@overload
def runs(step: Step) -> Callable[[Callable[P, SamplerOutput]], OrderedGridSampler[P]]: ...
@overload
def runs(step: type[Step]) -> Callable[[Callable[P, SamplerOutput]], GridSampler[P]]: ...
def runs(step: Step | type[Step]) -> Callable[[Callable[P, SamplerOutput]], GridSampler[P]]:
    """Decorator of a sampler function that runs a step on the driver: sets ``fn.step_type`` (what
    :func:`on_driver` reads) and, given a step (the one whose order the function states: its
    default, or for ``edm_sde`` the step with churn), ``fn.order`` to its order, so the order is
    declared once, on the step (``heun.order == EDMStep().order``)."""

    def attach(fn: Callable[P, SamplerOutput]) -> GridSampler[P]:
        sampler = cast("OrderedGridSampler[P]", fn)  # plain functions take attributes; set them below
        sampler.step_type = step if isinstance(step, type) else type(step)
        if isinstance(step, Step):
            sampler.order = step.order
        return sampler

    return attach


def on_driver(sampler: Callable) -> bool:
    """Whether ``sampler`` runs on the driver, so that it takes :func:`sample_on_grid`'s options
    (``x0_correction``, ``denoise_to_zero``, ...): a :class:`Step`, a sampler function marked by
    :func:`runs`, or a ``functools.partial`` of either (Hydra's ``_partial_`` included). Known by
    type, not by signature."""
    fn = sampler
    while isinstance(fn, functools.partial):
        fn = fn.func
    return isinstance(fn, Step) or isinstance(getattr(fn, "step_type", None), type)
