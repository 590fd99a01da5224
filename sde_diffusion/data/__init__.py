"""Data: 2-D toy sets, Gaussian mixtures with exact scores, and the user's own arrays."""

from .arrays import npz_dataset
from .dataset import Dataset, Density
from .gmm import GaussianMixture
from .toys import (
    EIGHT_GAUSSIANS_RADIUS,
    EIGHT_GAUSSIANS_STD,
    TOY_NAMES,
    Checkerboard,
    checkerboard,
    eight_gaussians,
    eight_gaussians_mixture,
    pinwheel,
    rings,
    spirals,
    swiss_roll,
    toy_dataset,
    two_moons,
)

__all__ = [
    "GaussianMixture",
    "Dataset",
    "Density",
    "toy_dataset",
    "npz_dataset",
    "TOY_NAMES",
    "Checkerboard",
    "eight_gaussians_mixture",
    "EIGHT_GAUSSIANS_RADIUS",
    "EIGHT_GAUSSIANS_STD",
    "checkerboard",
    "eight_gaussians",
    "two_moons",
    "spirals",
    "rings",
    "swiss_roll",
    "pinwheel",
]

from .images import DIGITS_LEVELS, IMAGE_INTERVAL, class_subset, digits_dataset, levels_to_interval, low_resolution, npz_image_dataset  # noqa: E402

__all__ += [
    "digits_dataset",
    "npz_image_dataset",
    "low_resolution",
    "class_subset",
    "levels_to_interval",
    "IMAGE_INTERVAL",
    "DIGITS_LEVELS",
]
