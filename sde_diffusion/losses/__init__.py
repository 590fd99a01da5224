"""Score-matching losses (per-sample values) and time weightings."""

from .score_matching import denoising_score_matching, sliced_score_matching
from .weighting import FlowMatchingWeighting, ImportanceLikelihoodWeighting, LikelihoodWeighting, NoiseWeighting

__all__ = [
    "denoising_score_matching",
    "sliced_score_matching",
    "NoiseWeighting",
    "LikelihoodWeighting",
    "ImportanceLikelihoodWeighting",
    "FlowMatchingWeighting",
]
