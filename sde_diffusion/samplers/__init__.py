"""Samplers: plain functions ``sampler(sde, score_fn, x_T, ts, *, generator, progress, ...)``."""

from .base import CountingScore, SamplerOutput
from .euler_maruyama import euler_maruyama

__all__ = ["SamplerOutput", "CountingScore", "euler_maruyama"]
