"""Score functions and the wrappers that make one: the one contract ``score(x, t)`` of every sampler,
loss and likelihood, what a network's output is turned into it by (parameterizations), counting
evaluations, and classifier-free guidance.

- :data:`ScoreFn`: ``score(x, t) -> grad_x log p_t(x)``; ``x`` is ``(B, *dims)``, ``t`` is ``(B,)``.
- Parameterizations turn a raw network ``net(x, t)`` into a score through the SDE's perturbation
  kernel ``x_t = m(t) x_0 + s(t) eps`` (``eps = -s score``, ``x0 = (x_t + s^2 score) / m``; see
  docs/references.md): the network predicts the score, the noise eps, the clean data x0, Salimans &
  Ho's ``v``, or the probability-flow velocity of flow matching. Class-conditional networks
  ``net(x, t, y)`` (e.g. :class:`~sde_diffusion.models.UNet` with ``n_classes``) pass through:
  ``forward(x, t, y)`` hands the ``(B,)`` int64 labels to the network, ``forward(x, t)`` calls
  ``net(x, t)`` (the null label for a conditional network), so a wrapped model is still a plain
  ``score(x, t)``. Image-conditioned networks take ``cond=`` (a
  :class:`~sde_diffusion.conditioning.Conditioning`) the same way.
- :class:`CountingScore` counts evaluations (the samplers' NFE).
- :class:`GuidedScore`: classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion
  Guidance", Eq. 6, written for scores: the map ``eps = -s(t) score`` is linear, so the eps and score
  forms agree), ``score(x, t) = (1 + w) s(x, t, y) - w s(x, t, null)``. The conditional model is
  anything called as ``model(x, t, y)`` with an integer ``n_classes = K``: labels ``0 .. K - 1`` are
  classes and ``K`` is the null label the model was trained on under label dropout.
- :class:`ClassifierGuidedScore`: classifier guidance (Dhariwal & Nichol 2021),
  ``score(x, t) + w grad_x log p_phi(y | x, t)`` with a noisy-data classifier.

This module depends on no SDE class: wrappers call the SDE's methods (``kernel``, ``drift``,
``diffusion``, ``has_kernel``) and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, overload

import torch
from torch import Tensor, nn

from ._checks import check_range
from ._shapes import batch_time, expand_like

if TYPE_CHECKING:
    from .conditioning import Conditioning
    from .sdes.base import SDE

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""A score function ``score(x, t) -> grad_x log p_t(x)``: ``x`` is ``(B, *dims)``, ``t`` is ``(B,)``."""


# ------------------------------------------------------------------------------- parameterizations
class _Parameterization(nn.Module):
    """Common part: holds the raw network and the SDE; ``forward(x, t, y=None)`` returns the score."""

    needs_kernel = True

    def __init__(self, net: nn.Module, sde: SDE):
        super().__init__()
        if self.needs_kernel and not sde.has_kernel:
            raise ValueError(
                f"{type(self).__name__} needs the SDE's perturbation kernel, which "
                f"{type(sde).__name__} does not define; use ScoreParameterization instead"
            )
        self.net = net
        self.sde = sde

    @property
    def n_classes(self) -> int | None:
        """The network's number of classes ``K`` (labels ``0 .. K - 1``, null label ``K``), or None
        for an unconditional network."""
        return getattr(self.net, "n_classes", None)

    def _net(self, x: Tensor, t: Tensor, y: Tensor | None, cond: Conditioning | None = None) -> Tensor:
        """``net(x, t)`` without labels (so networks without a ``y`` argument work), else ``net(x, t, y)``;
        a conditioning image and level ``cond`` (image-conditioned networks) go as ``cond=``."""
        extra = {} if cond is None else {"cond": cond}
        return self.net(x, t, **extra) if y is None else self.net(x, t, y, **extra)

    def _kernel(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.sde.kernel(t)
        return expand_like(m, x), expand_like(s, x)


class ScoreParameterization(_Parameterization):
    """The network predicts the score directly: ``score = net(x, t)``."""

    needs_kernel = False

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        return self._net(x, batch_time(t, x), y, cond)


class EpsilonParameterization(_Parameterization):
    """The network predicts the noise: ``score = -net(x, t) / s(t)`` (Ho et al. 2020; Song et al. 2021)."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        t = batch_time(t, x)
        _, s = self._kernel(x, t)
        return self._net(x, t, y, cond) / -s  # negate the (B, 1, ...) std, not the network's output


class LearnedVarianceParameterization(_Parameterization):
    """The network predicts the noise and a variance interpolation (Nichol & Dhariwal 2021, Sec. 3.1):
    its output has twice the channels of ``x`` (``learn_variance=True`` on
    :class:`~sde_diffusion.models.TimeMLP` and :class:`~sde_diffusion.models.UNet`); the first half
    ``eps_theta`` gives ``score = -eps_theta / s(t)`` as :class:`EpsilonParameterization`, the second
    ``r`` the interpolation ``v = (r + 1) / 2`` (iDDPM's convention: a zero-initialised output starts
    half way) of a reverse step's log-variance, ``log Sigma = v log beta + (1 - v) log beta_tilde``
    (Eq. 15), used by the DDPM sampler, the hybrid loss and the discrete VLB.

    ``forward(x, t, y)`` is the score, so every sampler and loss takes the model as it is;
    ``forward(x, t, y, variance=True)`` returns ``(score, v)``, both ``(B, *dims)``.
    """

    learns_variance = True

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, variance: bool = False, cond: Conditioning | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        t = batch_time(t, x)
        _, s = self._kernel(x, t)
        out = self._net(x, t, y, cond)
        if out.shape[0] != x.shape[0] or out.shape[1] != 2 * x.shape[1] or out.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"LearnedVarianceParameterization needs a network with twice the channels of x (learn_variance=true, "
                f"e.g. model=unet_learned_variance); got output {tuple(out.shape)} for input {tuple(x.shape)}"
            )
        eps, r = out.chunk(2, dim=1)
        score = eps / -s
        return (score, (r + 1) / 2) if variance else score


class DataParameterization(_Parameterization):
    """The network predicts the clean data: ``score = -(x - m(t) x0_hat) / s(t)^2`` (x0-prediction)."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        t = batch_time(t, x)
        m, s = self._kernel(x, t)
        return (m * self._net(x, t, y, cond) - x) / s**2


class VPredictionParameterization(_Parameterization):
    """The network predicts ``v = m(t) eps - s(t) x0`` (Salimans & Ho 2022, Sec. 4, written for any
    kernel; with ``m^2 + s^2 = 1`` it is their ``alpha eps - sigma x``). Inverting
    ``[x_t; v] = [[m, s], [-s, m]] [x0; eps]``: ``eps = (s x_t + m v) / (m^2 + s^2)``, so
    ``score = -eps / s = -(s x_t + m v) / (s (m^2 + s^2))``."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        t = batch_time(t, x)
        m, s = self._kernel(x, t)
        return -(s * x + m * self._net(x, t, y, cond)) / (s * (m**2 + s**2))


class EDMPreconditioning(_Parameterization):
    """EDM's preconditioned denoiser for any Gaussian path (Karras et al. 2022, Sec. 5 and Table 1).

    In the path's scaled variables, noise level ``sigma = s/m`` and ``y = x/m`` (so ``y = x0 + sigma z``),
    the network ``F`` gives the denoiser

        D(y, sigma) = c_skip y + c_out F(c_in y, c_noise),
        c_skip = sd^2 / (sigma^2 + sd^2),   c_out = sigma sd / sqrt(sigma^2 + sd^2),
        c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = log(sigma) / 4,

    with ``sd = sigma_data``, the data's standard deviation: the network's input and its training
    target have unit variance at every noise level, and ``D -> y`` as ``sigma -> 0`` without the
    network having to learn the identity. ``D`` estimates ``E[x0 | x_t]``, so
    ``score = (m D - x) / s^2``. The network's time input is ``c_noise``, not ``t``.
    """

    def __init__(self, net: nn.Module, sde: SDE, sigma_data: float = 1.0):
        super().__init__(net, sde)
        if not float(sigma_data) > 0:
            raise ValueError(
                f"sigma_data must be > 0 (the data's standard deviation; EDM uses 0.5 for images in [-1, 1]), got {sigma_data}"
            )
        self.sigma_data = float(sigma_data)

    def denoise(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        """``D``, the estimate of ``x0`` given ``x_t = x`` at time ``t``, shape ``(B, *dims)``."""
        t = batch_time(t, x)
        m, s = self._kernel(x, t)
        sigma, sd2 = s / m, self.sigma_data**2
        scaled = x / m
        c_in, c_skip = (sigma**2 + sd2).rsqrt(), sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data * c_in
        c_noise = (torch.log(s) - torch.log(m)).reshape(x.shape[0]) / 4
        return c_skip * scaled + c_out * self._net(c_in * scaled, c_noise, y, cond)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        t = batch_time(t, x)
        m, s = self._kernel(x, t)
        return (m * self.denoise(x, t, y, cond) - x) / s**2


class VelocityParameterization(_Parameterization):
    """The network predicts the probability-flow velocity ``v(x, t) = f(x, t) - g(t)^2 score / 2``
    (Song et al. 2021, Eq. 13), which for a Gaussian path is the flow-matching vector field
    ``E[m'(t) x0 + s'(t) eps | x_t]`` (Lipman et al. 2023, Eq. 8; for rectified flow ``E[eps - x0 | x_t]``).
    Hence ``score = 2 (f(x, t) - v) / g(t)^2``, which needs only the SDE's drift and diffusion
    (times with ``g(t) > 0``, i.e. ``t > 0``)."""

    needs_kernel = False

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        t = batch_time(t, x)
        g2 = expand_like(self.sde.diffusion(t) ** 2, x)
        return 2.0 * (self.sde.drift(x, t) - self._net(x, t, y, cond)) / g2


# ---------------------------------------------------------------------------------- counting
class CountingScore:
    """Wraps ``score(x, t)`` and counts calls; one call on a batch counts as one evaluation."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor, **kwargs) -> Tensor:
        self.nfe += 1
        return self.score_fn(x, t, **kwargs)


# ---------------------------------------------------------------------------------- guidance
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
