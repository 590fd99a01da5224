"""Exact likelihood through the probability-flow ODE, bits per dimension of discrete data, and the
variational bounds (DDPM's discrete VLB, the continuous-time ELBO), each also an object that computes a
batch's NLL (``ODELikelihood``, ``DiscreteVLB``, ``ContinuousELBO``, ``LatentBound``), and the mean NLL of
a data set with standard errors by any of them (``evaluate_nll``, behind ``sde-eval``)."""

from .bits import bits_per_dim, dequantization_offset, dequantize, nats_per_dim
from .bounds import continuous_elbo, discrete_vlb
from .estimators import ContinuousELBO, DiscreteVLB, LatentBound, NLLBound, ODELikelihood
from .evaluate import evaluate_nll
from .ode import LikelihoodOutput, log_likelihood

__all__ = [
    "log_likelihood",
    "LikelihoodOutput",
    "evaluate_nll",
    "NLLBound",
    "ODELikelihood",
    "DiscreteVLB",
    "ContinuousELBO",
    "LatentBound",
    "discrete_vlb",
    "continuous_elbo",
    "dequantize",
    "dequantization_offset",
    "bits_per_dim",
    "nats_per_dim",
]
