"""Samplers: plain functions ``sampler(sde, score_fn, x_T, ts, *, generator, progress, ...)``."""

from ..scores import CountingScore, GuidedScore, check_guidance
from .base import SamplerOutput
from .euler_maruyama import euler_maruyama

__all__ = ["SamplerOutput", "CountingScore", "euler_maruyama"]

# deterministic and fast samplers (probability-flow ODE, DDIM, EDM Heun, DPM-Solver++)
from .ddim import ddim
from .dpm_solver import dpm_solver_pp
from .heun import heun
from .ode import ode_decode, ode_encode, probability_flow_sampler

__all__ += ["probability_flow_sampler", "ode_encode", "ode_decode", "ddim", "heun", "dpm_solver_pp"]

# stochastic samplers (predictor-corrector, ancestral, Langevin, torchsde)
from .correctors import AnnealedLangevinCorrector, Corrector, LangevinCorrector, NoCorrector
from .predictor_corrector import predictor_corrector, tweedie_denoise
from .predictors import (
    AncestralPredictor,
    EulerMaruyamaPredictor,
    NoPredictor,
    Predictor,
    ReverseDiffusionPredictor,
)
from .torchsde_sampler import torchsde_sampler

__all__ += [
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
]

# drawing many samples in batches with batch-independent seeds
from .draw import DrawnSamples, draw_samples, sample_in_batches

__all__ += ["draw_samples", "DrawnSamples", "sample_in_batches"]

# conditional and controllable generation: classifier-free guidance, inpainting, SDEdit
from .controllable import MASK_REGIONS, inpaint, inpainting_mask, sdedit

__all__ += ["GuidedScore", "check_guidance", "inpaint", "inpainting_mask", "sdedit", "MASK_REGIONS"]
