"""Forward SDEs, their schedules, and the processes derived from them."""

from .base import SDE, ScoreFn
from .reverse import ProbabilityFlowODE, ReverseSDE
from .schedules import CosineBeta, LinearBeta
from .ve import VESDE
from .vp import CosineVPSDE, SubVPSDE, VariancePreservingSDE, VPSDE

__all__ = [
    "SDE",
    "ScoreFn",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "VariancePreservingSDE",
    "LinearBeta",
    "CosineBeta",
    "ReverseSDE",
    "ProbabilityFlowODE",
]
