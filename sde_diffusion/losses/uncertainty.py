"""EDM2's learned uncertainty weighting of a score-matching loss (Karras et al. 2024, "Analyzing and
Improving the Training Dynamics of Diffusion Models", Sec. 5 and Eq. 21; App. B.2)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..sdes.base import SDE
from ..types import ScoreFn
from .score_matching import denoising_score_matching


class LearnedUncertainty(nn.Module):
    """A score-matching loss with a learned log-variance ``u(sigma)`` per noise level (EDM2, Eq. 21):

        L(theta, u) = E_t [ w(t) err(theta; t) / e^{u(sigma)} + u(sigma) ],   sigma = s(t) / m(t),

    where ``w(t) err`` is ``loss_fn``'s per-sample loss exactly as without it (any weighting and
    proposal of :func:`~sde_diffusion.losses.denoising_score_matching`: eps, likelihood, EDM, min-SNR,
    flow matching, ...). For fixed ``theta`` the minimum over ``u`` is ``e^{u(sigma)} = E[w err | sigma]``,
    so at the optimum the model's gradient at each noise level is divided by that level's expected
    loss: every noise level contributes a gradient of the same scale, whatever the weighting makes of
    its loss's size (the homoscedastic uncertainty of Kendall et al. 2018, one task per noise level).
    Within a noise level the model's objective is unchanged; only the levels' shares are rebalanced.

    ``u`` is a function of EDM's ``c_noise = ln(sigma) / 4``: ``n_features`` Fourier features
    ``sqrt(2) cos(2 pi (f_i c_noise + phi_i))`` with fixed ``f_i ~ N(0, 1)``, ``phi_i ~ U(0, 1)`` (drawn
    from ``seed``, not from the global random stream), then one linear layer to a number. EDM2 uses
    the same 128 features and a magnitude-preserving linear layer without bias; here it is an ordinary
    linear layer with bias, initialised at zero, so that training starts from the plain loss
    (``u = 0``). EDM2 applies ``u`` to each of the ``D`` elements of the error and sums,
    ``D (w err_mean / e^u + u)``: with ``reduce="mean"`` this ``u`` is EDM2's and the loss EDM2's
    over ``D``; with ``"sum"`` ``u`` is larger by ``ln D``. Either way the model's gradient is EDM2's
    up to a constant factor, which Adam's steps do not see (short of its ``eps``).

    Called as the loss it wraps: ``loss(score_fn, sde, x0, generator=...) -> (B,)``. Its parameters
    train with the model (the :class:`~sde_diffusion.training.Trainer` adds them to the optimiser and
    checkpoints them as the loss's state); sampling and likelihood never see them, and
    :func:`~sde_diffusion.training.evaluate_loss` evaluates :attr:`loss_fn`, the plain loss.
    ``loss_fn`` must take ``uncertainty`` (:func:`~sde_diffusion.losses.denoising_score_matching`
    and its partials do). ``loss.learned_weighting=true``.
    """

    loss_fn: Callable[..., Tensor]
    frequencies: Tensor
    phases: Tensor

    def __init__(self, loss_fn: Callable[..., Tensor] = denoising_score_matching, *, n_features: int = 128, seed: int = 0):
        super().__init__()
        try:
            takes = "uncertainty" in inspect.signature(loss_fn).parameters
        except (TypeError, ValueError):  # no signature to read
            takes = False
        if not takes:
            name = getattr(getattr(loss_fn, "func", loss_fn), "__name__", type(loss_fn).__name__)
            raise TypeError(
                f"a learned uncertainty weighting divides a loss of squared errors by e^u(sigma): {name} takes no "
                "uncertainty argument; use denoising_score_matching (loss=dsm, edm, dsm_likelihood, dsm_importance, flow_matching, ddpm_simple)"
            )
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"n_features must be a positive integer (EDM2 uses 128), got {n_features!r}")
        self.loss_fn = loss_fn
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("frequencies", torch.randn(n_features, generator=gen))
        self.register_buffer("phases", torch.rand(n_features, generator=gen))
        # the linear layer, at zero (u = 0) and without drawing from the global stream as nn.Linear would
        self.weight = nn.Parameter(torch.zeros(n_features))
        self.bias = nn.Parameter(torch.zeros(()))

    def u(self, sigma: Tensor) -> Tensor:
        """The log-variance ``u`` ``(B,)`` at the noise levels ``sigma = s/m`` ``(B,)``, in ``sigma``'s dtype."""
        c_noise = sigma.to(self.frequencies.dtype).log() / 4
        features = math.sqrt(2.0) * torch.cos(2 * math.pi * (c_noise[:, None] * self.frequencies + self.phases))
        return (features @ self.weight + self.bias).to(sigma.dtype)

    def forward(self, score_fn: ScoreFn, sde: SDE, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Per-sample ``w err / e^u + u`` ``(B,)`` of ``x0`` ``(B, *dims)``."""
        return self.loss_fn(score_fn, sde, x0, generator=generator, uncertainty=self.u)

    def extra_repr(self) -> str:
        return f"loss_fn={self.loss_fn!r}, n_features={self.frequencies.numel()}"


def plain_loss(loss_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The loss without a learned uncertainty weighting (``loss_fn`` itself when it has none): what
    evaluation computes."""
    return loss_fn.loss_fn if isinstance(loss_fn, LearnedUncertainty) else loss_fn
