"""Learning-rate schedules with a linear warm-up, as ``torch.optim.lr_scheduler.LambdaLR``.

The factor of the learning rate during step ``k`` (0-based: the ``k``-th optimiser update) is

    min(1, (k + 1) / W) * shape(p),        p = clamp((k - W) / (K - W), 0, 1),

for ``W`` warm-up steps out of ``K`` in all, with ``shape`` ``constant`` (1), ``linear``
(``1 - (1 - r) p``) or ``cosine`` (``r + (1 - r) (1 + cos(pi p)) / 2``, Loshchilov & Hutter 2017)
decaying to the ratio ``r`` of the peak. Written as one ``LambdaLR`` with this closed form rather
than torch's ``SequentialLR`` of ``LinearLR`` and ``CosineAnnealingLR``: those update the rate
multiplicatively step by step, so a value depends on the path taken to it, while here the rate at
any step is exact and a resumed run recomputes it from the step alone (the warm-up equals the
earlier hand-written ``lr * min(1, (k + 1) / W)`` to the bit).
"""

from __future__ import annotations

import functools
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from .._checks import check_range

SHAPES = ("constant", "linear", "cosine")


def lr_factor(k: int, *, shape: str, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """The factor above for step ``k``."""
    warm = min(1.0, (k + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    p = min(1.0, max(0.0, (k - warmup_steps) / max(1, total_steps - warmup_steps)))
    if shape == "linear":
        return warm * (1.0 - (1.0 - final_ratio) * p)
    if shape == "cosine":
        return warm * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))
    return warm


def lr_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    shape: str = "constant",
    warmup_steps: int = 0,
    total_steps: int = 1,
    final_ratio: float = 0.0,
) -> LambdaLR:
    """A ``LambdaLR`` on ``optimizer`` with the factor of :func:`lr_factor`; the Trainer calls
    ``step()`` after every optimiser step."""
    if shape not in SHAPES:
        raise ValueError(f"lr_schedule shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    factor = functools.partial(
        lr_factor,
        shape=shape,
        warmup_steps=check_range("lr_schedule.warmup_steps", warmup_steps, low=0, integer=True),
        total_steps=check_range("lr_schedule.total_steps", total_steps, low=1, integer=True),
        final_ratio=check_range("lr_schedule.final_ratio", final_ratio, low=0, high=1, hint="the last learning rate over the peak"),
    )
    return LambdaLR(optimizer, factor)
