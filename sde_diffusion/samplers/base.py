"""What every sampler returns: the samples and the number of score evaluations spent on them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class SamplerOutput:
    """Samples ``(B, *dims)`` and the number of score evaluations (NFE) spent on them."""

    samples: Tensor
    nfe: int
