"""Counting evaluations of a score function: the NFE every sampler and likelihood solve reports.

The parameterizations that turn a network into a score live in
:mod:`sde_diffusion.models.parameterizations`, guidance in :mod:`sde_diffusion.samplers.guidance`
and the ``ScoreFn`` alias in :mod:`sde_diffusion.types`.
"""

from __future__ import annotations

from torch import Tensor

from .types import ScoreFn


class CountingScore:
    """Wraps ``score(x, t)`` and counts calls; one call on a batch counts as one evaluation."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor, **kwargs) -> Tensor:
        self.nfe += 1
        return self.score_fn(x, t, **kwargs)
