"""Forward SDEs, their schedules, and the processes derived from them."""

from ..types import ScoreFn
from .base import SDE
from .discrete import DDPMSDE, DiscreteBeta, DiscreteSchedule, cosine_betas, linear_betas
from .edm import EDMSDE
from .flow import RectifiedFlow
from .gaussian_path import GaussianPathSDE
from .reverse import ProbabilityFlowODE, ReverseSDE
from .schedules import CosineBeta, LinearBeta
from .ve import VESDE
from .vp import VPSDE, CosineVPSDE, SubVPSDE, VariancePreservingSDE

__all__ = [
    "SDE",
    "GaussianPathSDE",
    "EDMSDE",
    "RectifiedFlow",
    "ScoreFn",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "DDPMSDE",
    "DiscreteSchedule",
    "DiscreteBeta",
    "linear_betas",
    "cosine_betas",
    "VariancePreservingSDE",
    "LinearBeta",
    "CosineBeta",
    "ReverseSDE",
    "ProbabilityFlowODE",
]
