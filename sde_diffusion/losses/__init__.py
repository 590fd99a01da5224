"""Score-matching losses (per-sample values) and time weightings."""

from .autoencoder import AutoencoderLoss, autoencoder_terms
from .classification import classifier_loss, noisy_accuracy
from .ddpm import HybridLoss, LossAwareStepSampler
from .restoration import RestorationLoss, restoration_loss
from .score_matching import denoising_score_matching, sliced_score_matching
from .weighting import DiscreteStepWeighting, FlowMatchingWeighting, ImportanceLikelihoodWeighting, LikelihoodWeighting, NoiseWeighting

__all__ = [
    "denoising_score_matching",
    "sliced_score_matching",
    "NoiseWeighting",
    "LikelihoodWeighting",
    "ImportanceLikelihoodWeighting",
    "FlowMatchingWeighting",
    "DiscreteStepWeighting",
    "HybridLoss",
    "classifier_loss",
    "noisy_accuracy",
    "restoration_loss",
    "RestorationLoss",
    "AutoencoderLoss",
    "autoencoder_terms",
    "LossAwareStepSampler",
]
