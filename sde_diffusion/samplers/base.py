"""What every sampler shares: its output record and the score-evaluation counter."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..sdes.base import ScoreFn


@dataclass
class SamplerOutput:
    """Samples ``(B, *dims)`` and the number of score evaluations (NFE) spent on them."""

    samples: Tensor
    nfe: int


class CountingScore:
    """Wraps ``score(x, t)`` and counts calls; one call on a batch counts as one evaluation."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.score_fn(x, t)
