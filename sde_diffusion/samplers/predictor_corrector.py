"""Predictor-corrector sampling (Song et al. 2021, Sec. 4.2, Alg. 1) and Tweedie's final denoising."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .._shapes import batch_time
from ..sdes.base import SDE
from ..timesteps import check_grid
from ..types import ScoreFn
from .base import SamplerOutput
from .correctors import Corrector, NoCorrector
from .driver import Step, runs, sample_on_grid
from .predictors import NoPredictor, Predictor


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: Tensor, t: float | Tensor) -> Tensor:
    """Tweedie's posterior mean ``E[x_0 | x_t = x] = (x + s(t)^2 score(x, t)) / m(t)`` (Efron 2011;
    docs/references.md, discretizations). ``x``: ``(B, *dims)``; one score evaluation."""
    t = batch_time(t, x)
    return sde.x0_from_score(x, score_fn(x, t), t)


def _check_policies(sampler: str, predictor: Predictor, corrector: Corrector) -> None:
    """Reject predictors/correctors passed as classes or of another type, and a sampler that has
    neither; the errors name the fix."""
    for policy in (predictor, corrector):
        if isinstance(policy, type):
            raise TypeError(f"{sampler}: pass an instance, e.g. {policy.__name__}(), not the class itself")
        if not isinstance(policy, (Predictor, Corrector)):
            raise TypeError(f"{sampler}: expected a Predictor or Corrector instance, got {type(policy).__name__}")
    if isinstance(predictor, NoPredictor) and isinstance(corrector, NoCorrector):
        raise ValueError(f"{sampler} with NoPredictor and NoCorrector does nothing; choose one of them")


class PredictorCorrectorStep(Step):
    """A predictor from ``ts[i]`` to ``ts[i + 1]``, then ``M`` corrector steps at ``ts[i + 1]``
    (Song et al. 2021, Alg. 1); with ``denoise``, the driver finishes with Tweedie's denoising step
    (``denoise_to_zero``). ``final_noise=False`` makes the last predictor step return its mean
    (Euler-Maruyama's usual last step). Weak order: the predictor's."""

    def __init__(
        self,
        predictor: Predictor,
        corrector: Corrector,
        *,
        denoise: bool = False,
        final_noise: bool = True,
        name: str = "predictor-corrector",
    ):
        _check_policies("predictor_corrector", predictor, corrector)
        self.predictor, self.corrector, self.final_noise, self.name = predictor, corrector, final_noise, name
        self.denoise_to_zero = bool(denoise)
        self.order = predictor.order if predictor.order is not None else 0
        self.needs_kernel = predictor.requires_kernel or corrector.requires_kernel

    def step(self, solve, i, x, order_cap):
        sde, t, t_next = solve.sde, solve.ts[i], solve.ts[i + 1]
        if i == solve.n - 1 and not self.final_noise:
            x, _ = self.predictor.transition(sde, solve.model_score, x, t, t_next)
        else:
            x, _ = self.predictor.step(sde, solve.model_score, x, t, t_next, solve.generator)
        x, _ = self.corrector.step(sde, solve.model_score, x, t_next, t, solve.generator)
        return x, None


@runs(PredictorCorrectorStep)
def predictor_corrector(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    predictor: Predictor,
    corrector: Corrector,
    denoise: bool = True,
    **driver: Any,
) -> SamplerOutput:
    """Predictor-corrector sampler over the decreasing grid ``ts`` (Song et al. 2021, Alg. 1-3).

    For ``i = 0 .. N-1``: the predictor moves ``x`` from ``ts[i]`` to ``ts[i + 1]``, then the
    corrector applies its ``M`` Langevin steps at ``ts[i + 1]`` (the paper's order). Without
    denoising the output is the chain's last state, a sample of ``p_{ts[-1]}``; with
    ``denoise=True`` it is Tweedie's ``E[x_0 | x]`` at ``ts[-1]`` (:func:`tweedie_denoise`; the
    driver's ``denoise_to_zero``).

    Args:
        x: prior samples ``(B, *dims)`` at ``ts[0]``.
        ts: decreasing times ``(N + 1,)``, e.g. :func:`sde_diffusion.timesteps.uniform_time_grid`.
        predictor: e.g. :class:`ReverseDiffusionPredictor`; :class:`NoPredictor` for corrector-only.
        corrector: e.g. :class:`LangevinCorrector`; :class:`NoCorrector` for predictor-only.
        denoise: finish with Tweedie's denoising step (one more score evaluation).
        driver: ``generator``, ``progress``, ``callback``, ``x0_correction`` of
            :func:`~sde_diffusion.samplers.driver.sample_on_grid`.
    Returns: samples ``(B, *dims)`` and NFE ``= N (1 + M) (+ 1 with denoise)``, or ``N M (+ 1)``
    with :class:`NoPredictor`.
    """
    check_grid(ts)
    step = PredictorCorrectorStep(predictor, corrector, denoise=driver.pop("denoise_to_zero", denoise))
    if (step.needs_kernel or step.denoise_to_zero) and not sde.has_kernel:
        raise ValueError(
            f"predictor_corrector with {predictor!r}, {corrector!r} needs the perturbation kernel, which "
            f"{type(sde).__name__} does not define; implement kernel(t), or use "
            f"EulerMaruyamaPredictor/ReverseDiffusionPredictor without corrector and denoise=False"
        )
    return sample_on_grid(step, sde, score_fn, x, ts, **driver)
