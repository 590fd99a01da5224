"""Raw time-conditioned networks and the wrappers that turn them into score functions."""

from .embeddings import GaussianFourierEmbedding, SinusoidalEmbedding
from .mlp import TimeMLP
from .parameterizations import (
    DataParameterization,
    EpsilonParameterization,
    LearnedVarianceParameterization,
    ScoreParameterization,
    VelocityParameterization,
    VPredictionParameterization,
)
from .preconditioning import EDMPreconditioning, estimate_sigma_data

__all__ = [
    "TimeMLP",
    "GaussianFourierEmbedding",
    "SinusoidalEmbedding",
    "ScoreParameterization",
    "EDMPreconditioning",
    "estimate_sigma_data",
    "EpsilonParameterization",
    "LearnedVarianceParameterization",
    "DataParameterization",
    "VPredictionParameterization",
    "VelocityParameterization",
]

from .unet import UNet  # noqa: E402

__all__ += ["UNet"]

from .classifier import TimeClassifierMLP, UNetClassifier, as_classifier  # noqa: E402

__all__ += ["TimeClassifierMLP", "UNetClassifier", "as_classifier"]

from .restorer import Restorer, as_restorer  # noqa: E402

__all__ += ["Restorer", "as_restorer"]

from .autoencoder import Autoencoder, as_autoencoder  # noqa: E402

__all__ += ["Autoencoder", "as_autoencoder"]
