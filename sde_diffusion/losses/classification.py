"""The training loss of a noisy-data classifier for classifier guidance (Dhariwal & Nichol 2021, Sec. 4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import check_range
from ..sdes.base import SDE
from ..sdes.simulate import sample_marginal


def classifier_loss(log_prob_fn, sde: SDE, x0: Tensor, *, eps: float = 1e-5, generator: torch.Generator | None = None) -> Tensor:
    """Cross-entropy ``-log p_phi(y | x_t, t)`` per sample ``(B,)``, ``t ~ U(eps, T)``, ``x_t`` drawn
    from the forward process started at ``x0`` ``(B, *dims)`` (the kernel when the SDE has one).

    ``log_prob_fn(x, t) -> (B,)``: the classifier's log-probability of each sample's own label, as the
    Trainer passes a model trained on labelled data (``lambda x, t: model(x, t, y)`` for
    :class:`~sde_diffusion.models.UNetClassifier` and :class:`~sde_diffusion.models.TimeClassifierMLP`).
    """
    eps = check_range("eps", eps, low=0.0, high=sde.T, low_open=True, high_open=True, hint="a time in (0, T)")
    t = eps + (sde.T - eps) * torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
    with torch.no_grad():
        x_t = sample_marginal(sde, x0, t, generator=generator)
    log_p = log_prob_fn(x_t, t)
    if log_p.shape != (x0.shape[0],):
        raise ValueError(
            f"the classifier loss needs one log-probability per sample (a classifier called with labels), got shape "
            f"{tuple(log_p.shape)}: train on labelled data (data=digits, or an npz with labels)"
        )
    return -log_p


NOISE_LEVELS = (1e-3, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""Fractions of ``T`` at which :func:`noisy_accuracy` reports by default."""


@torch.no_grad()
def noisy_accuracy(
    classifier, sde: SDE, x0: Tensor, labels: Tensor, times: Sequence[float] | Tensor, *, batch_size: int = 1000, seed: int = 0
) -> Tensor:
    """The classifier's accuracy on ``x_t`` drawn from ``x0`` ``(N, *dims)`` at each time of ``times``
    ``(M,)``: the fraction whose arg-max logit is the label ``labels`` ``(N,)``. Returns ``(M,)``
    float64; the draws follow ``seed`` (comparable across runs and checkpoints)."""
    device = x0.device
    times = torch.as_tensor(times, dtype=torch.float64)
    generator = torch.Generator(device=device).manual_seed(seed)
    correct = torch.zeros(len(times), dtype=torch.float64)
    for j, t in enumerate(times.tolist()):
        for xb, yb in zip(x0.split(batch_size), labels.split(batch_size), strict=True):
            tb = torch.full((xb.shape[0],), t, device=device, dtype=xb.dtype)
            logits = classifier(sample_marginal(sde, xb, tb, generator=generator), tb)
            correct[j] += (logits.argmax(dim=1) == yb.to(device)).sum().item()
    return correct / x0.shape[0]
