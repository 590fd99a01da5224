"""Data: 2-D toy sets, Gaussian mixtures with exact scores, and the user's own arrays."""

from .gmm import GaussianMixture

__all__ = ["GaussianMixture"]
