"""Guidance: a conditional model, or a model and a noisy-data classifier, turned into one
``score(x, t)`` that any sampler takes.

- :class:`GuidedScore`: classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion
  Guidance", Eq. 6, written for scores: the map ``eps = -s(t) score`` is linear, so the eps and score
  forms agree), ``score(x, t) = (1 + w) s(x, t, y) - w s(x, t, null)``. The conditional model is
  anything called as ``model(x, t, y)`` with an integer ``n_classes = K``: labels ``0 .. K - 1`` are
  classes and ``K`` is the null label the model was trained on under label dropout.
- :class:`ClassifierGuidedScore`: classifier guidance (Dhariwal & Nichol 2021),
  ``score(x, t) + w grad_x log p_phi(y | x, t)`` with a noisy-data classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, overload

import torch
from torch import Tensor

from .._checks import check_range
from .._shapes import batch_time
from ..types import ScoreFn


def labels_for_batch(labels: Tensor, x: Tensor, who: str) -> Tensor:
    """``(B,)`` labels for a batch ``x``: one label for every sample (0-d), or exactly one per sample."""
    if labels.dim() == 0:
        return labels.to(x.device).expand(x.shape[0])
    if labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"{who} holds {labels.shape[0]} labels but got a batch of {x.shape[0]} samples; "
            f"draw all labelled samples in one batch, or give one int label for every sample"
        )
    return labels.to(x.device)


def _check_labels(labels: int | Tensor, high: int, what: str) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.dtype != torch.int64 or labels.dim() > 1:
        raise ValueError(f"labels must be an int or an int64 tensor of shape (B,), got {labels.dtype} of shape {tuple(labels.shape)}")
    if bool(((labels < 0) | (labels > high)).any()):
        raise ValueError(f"labels must lie in 0..{high} ({what}), got values from {int(labels.min())} to {int(labels.max())}")
    return labels


def check_guidance(w) -> float:
    """Return the guidance weight ``w`` as a float if it is a finite number ``>= 0``, else raise."""
    return check_range("guidance weight w", w, low=0, hint="0: purely conditional; 1 to 4 is typical")


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
        labels = _check_labels(labels, n_classes, f"{n_classes} is the null label")
        self.model = model
        self.labels = labels
        self.guidance = guidance
        self.null_label = n_classes

    def _labels_for(self, x: Tensor) -> Tensor:
        return labels_for_batch(self.labels, x, type(self).__name__)

    @overload
    def __call__(self, x: Tensor, t: Tensor, variance: Literal[False] = False) -> Tensor: ...
    @overload
    def __call__(self, x: Tensor, t: Tensor, variance: Literal[True]) -> tuple[Tensor, Tensor]: ...
    def __call__(self, x: Tensor, t: Tensor, variance: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``x``: ``(B, *dims)``; ``t``: scalar or ``(B,)``. Returns the guided score ``(B, *dims)``;
        with ``variance=True`` (a model with learned variances) also the conditional model's variance
        interpolation, as Dhariwal & Nichol 2021 sample guided models with it."""
        t = batch_time(t, x)
        y = self._labels_for(x)
        extra = {"variance": True} if variance else {}
        if self.guidance == 0.0:
            return self.model(x, t, y, **extra)
        null = torch.full_like(y, self.null_label)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), **extra)
        score, interp = out if variance else (out, None)
        conditional, unconditional = score.chunk(2)
        w = self.guidance
        guided = (1.0 + w) * conditional - w * unconditional
        return (guided, interp.chunk(2)[0]) if interp is not None else guided

    def __repr__(self) -> str:
        labels = self.labels.item() if self.labels.dim() == 0 else f"<{self.labels.shape[0]} labels>"
        return f"GuidedScore(labels={labels}, guidance={self.guidance})"


class ClassifierGuidedScore:
    """Classifier guidance (Dhariwal & Nichol 2021, Alg. 1 and Sec. 4, written for scores):
    ``score(x, t) = s(x, t) + w grad_x log p_phi(y | x, t)`` for fixed labels ``y``.

    Args:
        score_fn: any ``score(x, t)``: a model, or a :class:`GuidedScore` (classifier-free guidance;
            the two combine by adding their guidance terms).
        classifier: ``log_prob(x, t, y) -> (B,)``, the log-probability of the labels under a noisy-data
            classifier (:class:`~sde_diffusion.models.UNetClassifier`,
            :class:`~sde_diffusion.models.TimeClassifierMLP`, or the exact one of a Gaussian mixture,
            ``GaussianMixture.classifier(sde)``), differentiable in ``x``.
        labels: an int for every sample, or int64 ``(B,)``, in ``0 .. n_classes - 1``.
        scale: ``w >= 0``; ``w = 1`` with the exact classifier gives the exact conditional score
            ``grad log p_t(x | y)`` (Bayes' rule), larger ``w`` sharpens it; ``w = 0`` is ``score_fn``
            itself (the classifier is not called).

    The gradient is taken with autograd inside the call (samplers run without gradients), one
    classifier forward and backward per evaluation; the samplers' NFE counts the call once.
    """

    def __init__(self, score_fn: ScoreFn, classifier: Callable[[Tensor, Tensor, Tensor], Tensor], labels: int | Tensor, scale: float = 1.0):
        self.scale = check_range("classifier guidance scale w", scale, low=0, hint="0: no guidance; 1: the classifier's posterior")
        n_classes = getattr(classifier, "n_classes", None)
        self.labels = _check_labels(labels, n_classes - 1 if isinstance(n_classes, int) else 2**62, "the classifier's classes")
        self.score_fn = score_fn
        self.classifier = classifier

    def classifier_gradient(self, x: Tensor, t: Tensor) -> Tensor:
        """``grad_x log p_phi(y | x, t)`` ``(B, *dims)`` (each sample's log-probability depends on
        its own ``x`` only, so the gradient of the sum is the per-sample gradient)."""
        t = batch_time(t, x)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_p = self.classifier(x_in, t, labels_for_batch(self.labels, x, type(self).__name__))
            (grad,) = torch.autograd.grad(log_p.sum(), x_in)
        return grad

    @overload
    def __call__(self, x: Tensor, t: Tensor, variance: Literal[False] = False) -> Tensor: ...
    @overload
    def __call__(self, x: Tensor, t: Tensor, variance: Literal[True]) -> tuple[Tensor, Tensor]: ...
    def __call__(self, x: Tensor, t: Tensor, variance: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The guided score ``(B, *dims)``; with ``variance=True`` (a model with learned variances,
        for ``sampler=ddpm``), also the model's variance interpolation, which guidance leaves as it is."""
        out = self.score_fn(x, t, variance=True) if variance else self.score_fn(x, t)  # type: ignore[call-arg]
        score, interp = out if variance else (out, None)
        if self.scale != 0.0:
            score = score + self.scale * self.classifier_gradient(x, t)
        return (score, interp) if interp is not None else score

    def __repr__(self) -> str:
        labels = self.labels.item() if self.labels.dim() == 0 else f"<{self.labels.shape[0]} labels>"
        return f"ClassifierGuidedScore(labels={labels}, scale={self.scale})"
