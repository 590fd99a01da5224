"""sde-diffusion: score-based generative modeling with stochastic and ordinary differential equations.

``import sde_diffusion as sd`` gives the public API below; everything else is private.
"""

from typing import TYPE_CHECKING

from . import conditioning, degradations, distributed, image_metrics
from .conditioning import ConditionedScore, Conditioning, SuperResolution
from .data import (
    TOY_NAMES,
    Checkerboard,
    Dataset,
    GaussianMixture,
    digits_dataset,
    eight_gaussians_mixture,
    npz_dataset,
    npz_image_dataset,
    toy_dataset,
)
from .distances import sliced_wasserstein
from .likelihood import (
    LikelihoodOutput,
    bits_per_dim,
    continuous_elbo,
    dequantization_offset,
    dequantize,
    discrete_vlb,
    evaluate_nll,
    log_likelihood,
    nats_per_dim,
)
from .losses import (
    AutoencoderLoss,
    DiscreteStepWeighting,
    FlowMatchingWeighting,
    HybridLoss,
    ImportanceLikelihoodWeighting,
    LikelihoodWeighting,
    NoiseWeighting,
    RestorationLoss,
    classifier_loss,
    denoising_score_matching,
    restoration_loss,
    sliced_score_matching,
)
from .models import (
    Autoencoder,
    DataParameterization,
    EDMPreconditioning,
    EpsilonParameterization,
    GaussianFourierEmbedding,
    LearnedVarianceParameterization,
    ScoreParameterization,
    SinusoidalEmbedding,
    TimeClassifierMLP,
    TimeMLP,
    UNet,
    UNetClassifier,
    VelocityParameterization,
    VPredictionParameterization,
)
from .precision import MixedPrecision, accelerate
from .sample_range import SampleRange, sample_range
from .samplers import (
    AncestralPredictor,
    AnnealedLangevinCorrector,
    EulerMaruyamaPredictor,
    LangevinCorrector,
    NoCorrector,
    NoPredictor,
    ReverseDiffusionPredictor,
    SamplerOutput,
    cold_sample,
    ddim,
    ddpm,
    dpm_solver_2s,
    dpm_solver_pp,
    dpm_solver_sde,
    edm_sde,
    euler_maruyama,
    heun,
    ipndm,
    ode_decode,
    ode_encode,
    predictor_corrector,
    probability_flow_sampler,
    sample_on_grid,
    super_resolve,
    torchsde_sampler,
    tweedie_denoise,
    unipc,
)
from .scores import ClassifierGuidedScore, GuidedScore
from .sdes import (
    DDPMSDE,
    EDMSDE,
    SDE,
    VESDE,
    VPSDE,
    CosineBeta,
    CosineVPSDE,
    DiscreteSchedule,
    GaussianPathSDE,
    LinearBeta,
    ProbabilityFlowODE,
    RectifiedFlow,
    ReverseSDE,
    SubVPSDE,
    VariancePreservingSDE,
)
from .sdes.simulate import sample_marginal, simulate_forward
from .timesteps import discrete_time_grid, edm_time_grid, log_snr_time_grid, quadratic_time_grid, uniform_time_grid
from .training import Trainer, TrainingInterrupted, TrainOptions, load_checkpoint, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "accelerate",
    "MixedPrecision",
    "GaussianPathSDE",
    "EDMSDE",
    "RectifiedFlow",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "DDPMSDE",
    "DiscreteSchedule",
    "VariancePreservingSDE",
    "LinearBeta",
    "CosineBeta",
    "ReverseSDE",
    "ProbabilityFlowODE",
    "simulate_forward",
    "sample_marginal",
    "TimeMLP",
    "UNet",
    "GaussianFourierEmbedding",
    "SinusoidalEmbedding",
    "ScoreParameterization",
    "EDMPreconditioning",
    "EpsilonParameterization",
    "DataParameterization",
    "VPredictionParameterization",
    "VelocityParameterization",
    "denoising_score_matching",
    "sliced_score_matching",
    "NoiseWeighting",
    "LikelihoodWeighting",
    "ImportanceLikelihoodWeighting",
    "FlowMatchingWeighting",
    "DiscreteStepWeighting",
    "HybridLoss",
    "classifier_loss",
    "restoration_loss",
    "RestorationLoss",
    "AutoencoderLoss",
    "Autoencoder",
    "cold_sample",
    "super_resolve",
    "degradations",
    "conditioning",
    "image_metrics",
    "Conditioning",
    "ConditionedScore",
    "SuperResolution",
    "TimeClassifierMLP",
    "UNetClassifier",
    "ClassifierGuidedScore",
    "GuidedScore",
    "LearnedVarianceParameterization",
    "GaussianMixture",
    "Dataset",
    "toy_dataset",
    "npz_dataset",
    "digits_dataset",
    "npz_image_dataset",
    "TOY_NAMES",
    "Checkerboard",
    "eight_gaussians_mixture",
    "sliced_wasserstein",
    "sample_range",
    "SampleRange",
    "uniform_time_grid",
    "log_snr_time_grid",
    "quadratic_time_grid",
    "edm_time_grid",
    "discrete_time_grid",
    "SamplerOutput",
    "euler_maruyama",
    "predictor_corrector",
    "tweedie_denoise",
    "EulerMaruyamaPredictor",
    "ReverseDiffusionPredictor",
    "AncestralPredictor",
    "NoPredictor",
    "LangevinCorrector",
    "AnnealedLangevinCorrector",
    "NoCorrector",
    "torchsde_sampler",
    "probability_flow_sampler",
    "ode_encode",
    "ode_decode",
    "ddim",
    "ddpm",
    "heun",
    "edm_sde",
    "dpm_solver_pp",
    "dpm_solver_2s",
    "dpm_solver_sde",
    "unipc",
    "ipndm",
    "sample_on_grid",
    "log_likelihood",
    "LikelihoodOutput",
    "dequantize",
    "dequantization_offset",
    "bits_per_dim",
    "nats_per_dim",
    "evaluate_nll",
    "discrete_vlb",
    "continuous_elbo",
    "distributed",
    "Trainer",
    "TrainOptions",
    "load_run",
    "TrainedRun",
    "TrainingInterrupted",
    "save_checkpoint",
    "load_checkpoint",
]


if TYPE_CHECKING:
    from .runs import TrainedRun, load_run

_LAZY = {"load_run": "runs", "TrainedRun": "runs"}
"""Names loaded on first use: reloading a run reads its Hydra config, so importing them here would
load Hydra and OmegaConf with every ``import sde_diffusion`` (the core needs neither)."""


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
