"""sde-diffusion: score-based generative modeling with stochastic and ordinary differential equations.

``import sde_diffusion as sd`` gives the public API below; everything else is private.
"""

from .data import GaussianMixture
from .losses import (
    ImportanceLikelihoodWeighting,
    LikelihoodWeighting,
    NoiseWeighting,
    denoising_score_matching,
    sliced_score_matching,
)
from .models import (
    DataParameterization,
    EpsilonParameterization,
    GaussianFourierEmbedding,
    ScoreParameterization,
    SinusoidalEmbedding,
    TimeMLP,
)
from .sdes import (
    SDE,
    VESDE,
    VPSDE,
    CosineBeta,
    CosineVPSDE,
    LinearBeta,
    ProbabilityFlowODE,
    ReverseSDE,
    SubVPSDE,
    VariancePreservingSDE,
)
from .sdes.simulate import sample_marginal, simulate_forward

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "VariancePreservingSDE",
    "LinearBeta",
    "CosineBeta",
    "ReverseSDE",
    "ProbabilityFlowODE",
    "simulate_forward",
    "sample_marginal",
    "TimeMLP",
    "GaussianFourierEmbedding",
    "SinusoidalEmbedding",
    "ScoreParameterization",
    "EpsilonParameterization",
    "DataParameterization",
    "denoising_score_matching",
    "sliced_score_matching",
    "NoiseWeighting",
    "LikelihoodWeighting",
    "ImportanceLikelihoodWeighting",
    "GaussianMixture",
]
