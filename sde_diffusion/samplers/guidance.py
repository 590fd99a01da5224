"""Classifier-free guidance: a class-conditional model and fixed labels as one plain ``score(x, t)``.

Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Eq. 6, written for scores (the map
``eps = -s(t) score`` is linear, so the eps and score forms agree):

    score(x, t) = (1 + w) s(x, t, y) - w s(x, t, null).

The result satisfies the one contract of every sampler and of the likelihood, so nothing downstream
knows about labels. The conditional model is anything called as ``model(x, t, y)`` with an integer
attribute ``n_classes = K``: labels ``0 .. K - 1`` are classes and ``K`` is the null label the model
was trained on under label dropout (the parameterization wrappers around
:class:`~sde_diffusion.models.UNet` are such models).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .._shapes import batch_time


def check_guidance(w) -> float:
    """Return the guidance weight ``w`` as a float if it is a finite number ``>= 0``, else raise."""
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise ValueError(f"guidance weight w must be a finite number >= 0 (0: purely conditional; 1 to 4 is typical), got {w!r}")
    return float(w)


class GuidedScore:
    """``score(x, t) = (1 + w) s(x, t, y) - w s(x, t, null)`` for fixed labels ``y``.

    Args:
        model: conditional score model ``model(x, t, y) -> (B, *dims)`` with ``model.n_classes = K``.
        labels: one label for every sample (a Python int or 0-d tensor; any batch size), or an int64
            tensor ``(B,)`` with one label per sample of a batch of exactly ``B``. Values in
            ``0 .. K`` (``K``, the null label, gives the unconditional score).
        guidance: ``w >= 0``. ``w = 0`` is the conditional score ``s(x, t, y)``, one network call;
            ``w > 0`` evaluates the conditional and null-label scores in one call on a ``2B`` batch
            (still one evaluation to the samplers' NFE counters, at twice the cost).
    """

    def __init__(self, model: Callable[..., Tensor], labels: int | Tensor, guidance: float = 0.0):
        n_classes = getattr(model, "n_classes", None)
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(
                f"guidance needs a class-conditional model with an integer n_classes (its null label), got "
                f"{type(model).__name__} with n_classes={n_classes!r}; build the network with n_classes "
                f"(e.g. model.net.n_classes=10) and train it on labelled data"
            )
        guidance = check_guidance(guidance)
        labels = torch.as_tensor(labels)
        if labels.dtype != torch.int64 or labels.dim() > 1:
            raise ValueError(f"labels must be an int or an int64 tensor of shape (B,), got {labels.dtype} of shape {tuple(labels.shape)}")
        if bool(((labels < 0) | (labels > n_classes)).any()):
            raise ValueError(f"labels must lie in 0..{n_classes} ({n_classes} is the null label), got values from {int(labels.min())} to {int(labels.max())}")
        self.model = model
        self.labels = labels
        self.guidance = guidance
        self.null_label = n_classes

    def _labels_for(self, x: Tensor) -> Tensor:
        if self.labels.dim() == 0:
            return self.labels.to(x.device).expand(x.shape[0])
        if self.labels.shape[0] != x.shape[0]:
            raise ValueError(
                f"GuidedScore holds {self.labels.shape[0]} labels but got a batch of {x.shape[0]} samples; "
                f"draw all labelled samples in one batch, or give one int label for every sample"
            )
        return self.labels.to(x.device)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """``x``: ``(B, *dims)``; ``t``: scalar or ``(B,)``. Returns the guided score ``(B, *dims)``."""
        t = batch_time(t, x)
        y = self._labels_for(x)
        if self.guidance == 0.0:
            return self.model(x, t, y)
        null = torch.full_like(y, self.null_label)
        conditional, unconditional = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
        w = self.guidance
        return (1.0 + w) * conditional - w * unconditional

    def __repr__(self) -> str:
        labels = self.labels.item() if self.labels.dim() == 0 else f"<{self.labels.shape[0]} labels>"
        return f"GuidedScore(labels={labels}, guidance={self.guidance})"
