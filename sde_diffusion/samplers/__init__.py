"""Samplers: plain functions ``sampler(sde, score_fn, x_T, ts, *, generator, progress, ...)``."""

from ..scores import CountingScore, GuidedScore, check_guidance
from .base import SamplerOutput
from .controllable import MASK_REGIONS, inpaint, inpainting_mask, sdedit
from .correctors import AnnealedLangevinCorrector, Corrector, LangevinCorrector, NoCorrector
from .ddim import ddim
from .dpm_solver import dpm_solver_pp
from .draw import DrawnSamples, draw_samples, sample_in_batches
from .euler_maruyama import euler_maruyama
from .heun import heun
from .ode import ode_decode, ode_encode, probability_flow_sampler
from .predictor_corrector import predictor_corrector, tweedie_denoise
from .predictors import (
    AncestralPredictor,
    EulerMaruyamaPredictor,
    NoPredictor,
    Predictor,
    ReverseDiffusionPredictor,
)
from .torchsde_sampler import torchsde_sampler

__all__ = [
    "SamplerOutput",
    "CountingScore",
    "euler_maruyama",
    "probability_flow_sampler",
    "ode_encode",
    "ode_decode",
    "ddim",
    "heun",
    "dpm_solver_pp",
    "predictor_corrector",
    "tweedie_denoise",
    "Predictor",
    "EulerMaruyamaPredictor",
    "ReverseDiffusionPredictor",
    "AncestralPredictor",
    "NoPredictor",
    "Corrector",
    "LangevinCorrector",
    "AnnealedLangevinCorrector",
    "NoCorrector",
    "torchsde_sampler",
    "draw_samples",
    "DrawnSamples",
    "sample_in_batches",
    "GuidedScore",
    "check_guidance",
    "inpaint",
    "inpainting_mask",
    "sdedit",
    "MASK_REGIONS",
]
