"""Exact likelihood through the probability-flow ODE, bits per dimension of discrete data, and the
mean NLL of a data set with standard errors (``evaluate_nll``, behind ``sde-eval``)."""

from .bits import bits_per_dim, dequantization_offset, dequantize, nats_per_dim
from .evaluate import evaluate_nll
from .ode import LikelihoodOutput, log_likelihood

__all__ = [
    "log_likelihood",
    "LikelihoodOutput",
    "evaluate_nll",
    "dequantize",
    "dequantization_offset",
    "bits_per_dim",
    "nats_per_dim",
]
