"""Samplers: callables ``sampler(sde, score_fn, x_T, ts, *, generator, progress, ...)``.

Every fixed-grid sampler is a step object run by one driver (:func:`sample_on_grid`), which adds a
per-step ``callback``, an ``x0_correction`` hook (thresholding, inpainting), ``denoise_to_zero`` and
per-sample noise to all of them; a step called as a sampler runs on the driver, and the functions
(``ddim``, ``dpm_solver_pp``, ...) are named shortcuts for their steps.
"""

from .._noise import PerSampleNoise
from ..scores import CountingScore
from .base import SamplerOutput
from .cold import cold_sample
from .controllable import MASK_REGIONS, NoisedKnown, inpaint, inpainting_mask, sdedit
from .correctors import AnnealedLangevinCorrector, Corrector, LangevinCorrector, NoCorrector
from .ddim import DDIMStep, ddim
from .ddpm import DDPMStep, ddpm
from .dpm_solver import DPMSolverMultistep, DPMSolverSDE, DPMSolverSinglestep2S, dpm_solver_2s, dpm_solver_pp, dpm_solver_sde
from .draw import DrawnSamples, draw_samples, sample_in_batches, super_resolve
from .driver import Prediction, Solve, Step, on_driver, sample_on_grid
from .edm import EDMStep, edm_sde, heun
from .euler_maruyama import EulerMaruyamaStep, euler_maruyama
from .guidance import ClassifierGuidedScore, GuidedScore, check_guidance
from .ipndm import IPNDMStep, ipndm
from .ode import ode_decode, ode_encode, probability_flow_sampler
from .predictor_corrector import PredictorCorrectorStep, predictor_corrector, tweedie_denoise
from .predictors import (
    AncestralPredictor,
    EulerMaruyamaPredictor,
    NoPredictor,
    Predictor,
    ReverseDiffusionPredictor,
)
from .thresholding import DynamicThreshold, StaticThreshold, thresholding
from .torchsde_sampler import torchsde_sampler
from .unipc import UniPCStep, unipc

__all__ = [
    "SamplerOutput",
    "CountingScore",
    "sample_on_grid",
    "on_driver",
    "cold_sample",
    "Step",
    "Solve",
    "Prediction",
    "PerSampleNoise",
    "euler_maruyama",
    "EulerMaruyamaStep",
    "probability_flow_sampler",
    "ode_encode",
    "ode_decode",
    "ddim",
    "DDIMStep",
    "ddpm",
    "DDPMStep",
    "heun",
    "edm_sde",
    "EDMStep",
    "dpm_solver_pp",
    "dpm_solver_2s",
    "dpm_solver_sde",
    "DPMSolverMultistep",
    "DPMSolverSinglestep2S",
    "DPMSolverSDE",
    "unipc",
    "UniPCStep",
    "ipndm",
    "IPNDMStep",
    "predictor_corrector",
    "PredictorCorrectorStep",
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
    "super_resolve",
    "DrawnSamples",
    "sample_in_batches",
    "GuidedScore",
    "ClassifierGuidedScore",
    "check_guidance",
    "thresholding",
    "StaticThreshold",
    "DynamicThreshold",
    "inpaint",
    "NoisedKnown",
    "inpainting_mask",
    "sdedit",
    "MASK_REGIONS",
]
