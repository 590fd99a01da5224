"""Training options: plain values, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._checks import check_range
from .posthoc_ema import check_sigma_rel

EMA_KINDS = ("standard", "posthoc")


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
        ema: ``standard`` (the EMA above) or ``posthoc``: EDM2's post-hoc EMA (Karras et al. 2024,
            Sec. 3), power-function averages of widths ``ema_sigma_rel`` tracked in place of the
            EMA, with snapshots every ``ema_snapshot_every`` steps from which the average of any
            width is reconstructed after training
            (:mod:`~sde_diffusion.training.posthoc_ema`, ``sde-ema``).
        ema_sigma_rel: with ``ema=posthoc``, the relative widths of the tracked profiles; the first
            is the one the run evaluates and saves as its EMA weights.
        ema_snapshot_every: with ``ema=posthoc``, write ``checkpoints/ema_snapshots/step-<step>.pt``
            every this many steps (and at the end); None: every twentieth of ``steps``.
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
        data_on_device: true: the training data are moved to the training device once and each
            batch is an index into them (small data sets); false: they stay in host memory and each
            step's rows are gathered ahead by ``data_workers`` processes and copied to the device
            (:mod:`~sde_diffusion.training.streaming`; data larger than the device's memory).
        data_workers: loader processes for ``data_on_device=false`` (0: gather in the training process).
    """

    steps: int = 20_000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 500
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    ema: str = "standard"
    ema_sigma_rel: list[float] = field(default_factory=lambda: [0.05, 0.10])
    ema_snapshot_every: int | None = None
    checkpoint_every: int = 5_000
    log_every: int = 100
    resume: bool = False
    progress: bool = True
    label_dropout: float = 0.1
    grad_accumulation: int = 1
    data_on_device: bool = True
    data_workers: int = 2

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "grad_accumulation"):
            setattr(self, name, check_range(f"train.{name}", getattr(self, name), low=1, integer=True))
        self.warmup_steps = check_range("train.warmup_steps", self.warmup_steps, low=0, integer=True)
        self.data_workers = check_range(
            "train.data_workers", self.data_workers, low=0, integer=True, hint="0 gathers in the training process"
        )
        self.lr = check_range("train.lr", self.lr, low=0, low_open=True, hint="try 1e-3")
        self.grad_clip = check_range("train.grad_clip", self.grad_clip, low=0, optional=True, hint="0 or null disables clipping") or None
        self.ema_decay = check_range("train.ema_decay", self.ema_decay, low=0, high=1, high_open=True, hint="0.999 is typical")
        if self.ema not in EMA_KINDS:
            raise ValueError(f"train.ema must be one of {', '.join(EMA_KINDS)}, got {self.ema!r}")
        self.ema_sigma_rel = [check_sigma_rel(s, "train.ema_sigma_rel") for s in self.ema_sigma_rel]
        if not self.ema_sigma_rel or len(set(self.ema_sigma_rel)) != len(self.ema_sigma_rel):
            raise ValueError(f"train.ema_sigma_rel must list distinct profile widths (EDM2: [0.05, 0.10]); got {self.ema_sigma_rel}")
        if self.ema_snapshot_every is None:
            self.ema_snapshot_every = max(1, self.steps // 20)
        self.ema_snapshot_every = check_range("train.ema_snapshot_every", self.ema_snapshot_every, low=1, integer=True)
        self.label_dropout = check_range(
            "train.label_dropout",
            self.label_dropout,
            low=0,
            high=1,
            high_open=True,
            hint="0.1 trains the null label on a tenth of the samples, for classifier-free guidance; 0 disables guidance",
        )
        for name in ("resume", "progress", "ema_warmup", "data_on_device"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"train.{name} must be true or false, got {getattr(self, name)!r}")
