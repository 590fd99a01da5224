"""Exact likelihood through the probability-flow ODE, and bits per dimension of discrete data."""

from .bits import bits_per_dim, dequantization_offset, dequantize, nats_per_dim
from .ode import LikelihoodOutput, log_likelihood

__all__ = [
    "log_likelihood",
    "LikelihoodOutput",
    "dequantize",
    "dequantization_offset",
    "bits_per_dim",
    "nats_per_dim",
]
