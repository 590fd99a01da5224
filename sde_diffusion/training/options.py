"""Training options: plain values, validated when built."""

from __future__ import annotations

import math
from dataclasses import dataclass


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ValueError(f"train.{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass
class TrainOptions:
    """How to optimise: the learning rate and its warm-up, gradient clipping and an EMA of the weights
    (the optimiser and the schedule's shape are the Trainer's ``optimizer`` and ``lr_schedule``).

    Args:
        steps: total optimiser steps (a resumed run continues up to this number).
        batch_size: samples per step, drawn with replacement from the training split.
        lr: peak learning rate, reached after the warm-up (> 0).
        warmup_steps: the learning rate rises linearly from lr/warmup_steps to lr over these steps.
        grad_clip: clip the global gradient norm to this value; None or 0 disables clipping.
        ema_decay: decay of the exponential moving average of the weights, in [0, 1): the
            largest decay, reached after the warm-up.
        ema_warmup: warm the decay up as ``min(ema_decay, (1 + n) / (10 + n))`` after ``n``
            updates (:class:`~sde_diffusion.training.ema.EMA`), so that short runs are not
            evaluated with an average of mostly untrained weights; false gives the fixed decay.
        checkpoint_every: write ``checkpoints/last.pt`` every this many steps (and at the end).
        log_every: append a line to ``metrics.jsonl`` every this many steps.
        resume: continue from the run directory's ``checkpoints/last.pt``.
        progress: show a tqdm progress bar.
        grad_accumulation: micro-batches per process per step; the global ``batch_size`` is split
            into ``world_size x grad_accumulation`` equal micro-batches (memory, and the exact match
            between multi-process runs and one process: see :class:`~sde_diffusion.training.Trainer`).
        label_dropout: for class-conditional training, the probability in [0, 1) that a sample's
            label is replaced by the null label (classifier-free guidance, Ho & Salimans 2022: 0.1
            to 0.2); unused without labels.
    """

    steps: int = 20_000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 500
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    checkpoint_every: int = 5_000
    log_every: int = 100
    resume: bool = False
    progress: bool = True
    label_dropout: float = 0.1
    grad_accumulation: int = 1

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "grad_accumulation"):
            setattr(self, name, _positive_int(name, getattr(self, name)))
        if isinstance(self.warmup_steps, bool) or int(self.warmup_steps) != self.warmup_steps or self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        self.warmup_steps = int(self.warmup_steps)
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"train.lr must be a positive number, got {self.lr!r} (try 1e-3)")
        self.lr = float(self.lr)
        if self.grad_clip is not None:
            if not isinstance(self.grad_clip, (int, float)) or not math.isfinite(self.grad_clip) or self.grad_clip < 0:
                raise ValueError(f"train.grad_clip must be a positive number, or 0/null to disable, got {self.grad_clip!r}")
            self.grad_clip = float(self.grad_clip) or None
        if not isinstance(self.ema_decay, (int, float)) or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay!r} (0.999 is typical)")
        self.ema_decay = float(self.ema_decay)
        if isinstance(self.label_dropout, bool) or not isinstance(self.label_dropout, (int, float)) or not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(
                f"train.label_dropout must lie in [0, 1), got {self.label_dropout!r} (0.1 trains the null "
                f"label on a tenth of the samples, for classifier-free guidance; 0 disables guidance)"
            )
        self.label_dropout = float(self.label_dropout)
        for name in ("resume", "progress", "ema_warmup"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"train.{name} must be true or false, got {getattr(self, name)!r}")
