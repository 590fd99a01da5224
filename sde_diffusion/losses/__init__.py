"""Score-matching losses (per-sample values), noise-level weightings and the proposals their times are drawn from."""

from .autoencoder import AutoencoderLoss, autoencoder_terms
from .classification import classifier_loss, noisy_accuracy
from .ddpm import HybridLoss, LossAwareStepSampler
from .proposals import (
    DiscreteTimeProposal,
    LogitNormalProposal,
    LogNormalProposal,
    Proposal,
    UniformLogSNRProposal,
    UniformTimeProposal,
    log_snr_speed,
)
from .restoration import RestorationLoss, restoration_loss
from .score_matching import denoising_score_matching, sliced_score_matching
from .uncertainty import LearnedUncertainty, plain_loss
from .weighting import (
    DiscreteStepWeighting,
    EDMWeighting,
    FlowMatchingWeighting,
    ImportanceLikelihoodWeighting,
    ImportanceSampled,
    LikelihoodWeighting,
    MinSNRWeighting,
    NoiseWeighting,
    SigmoidWeighting,
    VPredictionWeighting,
    Weighting,
)

__all__ = [
    "denoising_score_matching",
    "sliced_score_matching",
    "LearnedUncertainty",
    "plain_loss",
    "NoiseWeighting",
    "LikelihoodWeighting",
    "ImportanceLikelihoodWeighting",
    "FlowMatchingWeighting",
    "DiscreteStepWeighting",
    "VPredictionWeighting",
    "MinSNRWeighting",
    "SigmoidWeighting",
    "EDMWeighting",
    "Weighting",
    "ImportanceSampled",
    "Proposal",
    "UniformTimeProposal",
    "UniformLogSNRProposal",
    "LogNormalProposal",
    "LogitNormalProposal",
    "DiscreteTimeProposal",
    "log_snr_speed",
    "HybridLoss",
    "classifier_loss",
    "noisy_accuracy",
    "restoration_loss",
    "RestorationLoss",
    "AutoencoderLoss",
    "autoencoder_terms",
    "LossAwareStepSampler",
]
