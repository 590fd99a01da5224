"""Euler-Maruyama on the reverse-time SDE (Song et al. 2021, Eq. 6; Kloeden & Platen 1992)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..sdes.base import SDE
from ..types import ScoreFn
from .base import SamplerOutput
from .correctors import NoCorrector
from .driver import runs, sample_on_grid
from .predictor_corrector import PredictorCorrectorStep
from .predictors import EulerMaruyamaPredictor


class EulerMaruyamaStep(PredictorCorrectorStep):
    """Euler-Maruyama on the reverse SDE as a step (:func:`euler_maruyama`): the
    :class:`EulerMaruyamaPredictor` without corrector, its last step returning its mean."""

    def __init__(self) -> None:
        super().__init__(EulerMaruyamaPredictor(), NoCorrector(), final_noise=False, name="euler-maruyama")


@runs(EulerMaruyamaStep())
def euler_maruyama(sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, **driver: Any) -> SamplerOutput:
    """Integrate ``dx = [f - g^2 s] dt + g dw_bar`` from ``ts[0]`` down the grid ``ts``.

    Step from ``t`` to ``t + dt`` (``dt < 0``): ``x <- x + (f - g^2 s) dt + g sqrt(|dt|) z``
    (:class:`EulerMaruyamaPredictor`). The last step returns its mean (no noise is added after the
    final score evaluation), the usual choice that avoids leaving noise of scale ``g sqrt(|dt|)`` on
    the samples. Weak order 1 (``euler_maruyama.order``); works for any SDE, with or without a kernel.

    Args:
        x: prior samples ``(B, *dims)`` at time ``ts[0]``.
        ts: decreasing times ``(N + 1,)``, e.g. :func:`sde_diffusion.timesteps.uniform_time_grid`.
        driver: ``generator``, ``progress``, ``callback``, ``x0_correction``, ``denoise_to_zero`` of
            :func:`~sde_diffusion.samplers.driver.sample_on_grid`.
    Returns: samples at ``ts[-1]`` and NFE = N (+ 1 with ``denoise_to_zero``).
    """
    return sample_on_grid(EulerMaruyamaStep(), sde, score_fn, x, ts, **driver)
