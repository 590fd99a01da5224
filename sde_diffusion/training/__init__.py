"""Training: the optimisation loop, its options, EMA, metrics and atomic, verified checkpoints."""

from .checkpoint import CheckpointError, UnreadableCheckpointError, load_checkpoint, save_checkpoint
from .interrupt import TrainingInterrupted
from .metrics import MetricsLog
from .options import TrainOptions
from .schedules import lr_schedule
from .trainer import NonFiniteLossError, Trainer, TrainResult, evaluate_loss

__all__ = [
    "Trainer",
    "TrainOptions",
    "lr_schedule",
    "TrainResult",
    "NonFiniteLossError",
    "evaluate_loss",
    "MetricsLog",
    "CheckpointError",
    "UnreadableCheckpointError",
    "TrainingInterrupted",
    "save_checkpoint",
    "load_checkpoint",
]
