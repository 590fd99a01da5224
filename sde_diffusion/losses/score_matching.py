"""Score-matching losses. Each returns per-sample values of shape ``(B,)``; the caller reduces."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_range
from ..sdes.base import SDE
from ..sdes.simulate import sample_marginal
from ..types import ScoreFn
from .proposals import Proposal
from .weighting import LikelihoodWeighting, NoiseWeighting, Weighting

_REDUCTIONS = ("sum", "mean")


def _check(sde: SDE, eps: float, reduce: str) -> None:
    check_range("eps", eps, low=0.0, high=sde.T, low_open=True, high_open=True, hint="a time in (0, T); the usual value is 1e-5")
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}")


def _drawn(weighting, proposal: Proposal | None):
    """What draws the times and weighs them: a :class:`~.weighting.Weighting` drawn from ``proposal``
    (default: its own), or a duck-typed weighting, which draws its own times."""
    if isinstance(weighting, Weighting):
        return weighting.drawn_from(proposal)
    if proposal is not None:
        raise TypeError(f"{weighting!r} draws its own times and states no value per noise level: give it no proposal, or use a Weighting")
    return weighting


def _reduce(v: Tensor, reduce: str) -> Tensor:
    v = v.reshape(v.shape[0], -1)
    return v.sum(dim=1) if reduce == "sum" else v.mean(dim=1)


def denoising_score_matching(
    score_fn: ScoreFn,
    sde: SDE,
    x0: Tensor,
    *,
    weighting=None,
    proposal: Proposal | None = None,
    eps: float = 1e-5,
    reduce: str = "sum",
    generator: torch.Generator | None = None,
    uncertainty: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Denoising score matching (Vincent 2011; Song et al. 2021, Eq. 7), per sample.

    ``lambda(t) || s_theta(x_t, t) + z / s(t) ||^2`` with ``x_t = m(t) x0 + s(t) z``, ``z ~ N(0, I)``,
    ``t`` drawn from ``proposal`` (default: the weighting's own, see :mod:`.proposals`) and
    ``lambda`` the weighting's times the proposal's importance, so the expectation is the objective
    ``weighting`` states (default :class:`NoiseWeighting`, ``lambda = s^2``: the eps loss, uniform
    ``t``). Computed as ``(lambda / s^2) || eps_hat - z ||^2``, ``eps_hat = -s s_theta``
    (:meth:`~sde_diffusion.sdes.SDE.eps_from_score`), for numerical range at small ``s``, with the
    weighting's own ``weight_over_variance`` when it has one (see :mod:`.weighting`).

    ``x0``: ``(B, *dims)``. Returns ``(B,)``: the squared norm summed (``reduce="sum"``) or averaged
    (``"mean"``) over the data dimensions. Needs the SDE's kernel.

    ``uncertainty``: a learned log-variance ``u(sigma)`` ``(B,) -> (B,)`` of the noise level
    ``sigma = s/m``; the per-sample loss ``L`` becomes ``L / e^u + u`` (EDM2, Karras et al. 2024,
    Eq. 21; :class:`~.uncertainty.LearnedUncertainty`, which trains it).
    """
    weighting = NoiseWeighting() if weighting is None else weighting
    _check(sde, eps, reduce)
    if not sde.has_kernel:
        raise ValueError(
            f"denoising score matching needs a closed-form kernel, which {type(sde).__name__} lacks; use sliced_score_matching instead"
        )
    drawn = _drawn(weighting, proposal)
    t = drawn.sample_time(sde, x0.shape[0], eps, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t, z, s = sde.perturb(x0, t, generator=generator)
    residual = sde.eps_from_score(score_fn(x_t, t), t) - z
    ratio = getattr(drawn, "weight_over_variance", None)
    ratio = drawn.weight(sde, t, eps) / s**2 if ratio is None else ratio(sde, t, eps)
    loss = ratio * _reduce(residual**2, reduce)
    if uncertainty is None:
        return loss
    u = uncertainty(s / sde.kernel(t)[0])
    return loss * torch.exp(-u) + u


def sliced_score_matching(
    score_fn: ScoreFn,
    sde: SDE,
    x0: Tensor,
    *,
    weighting=None,
    proposal: Proposal | None = None,
    eps: float = 1e-5,
    reduce: str = "sum",
    n_projections: int = 1,
    projection: str = "rademacher",
    simulation_steps: int = 100,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliced score matching with variance reduction (Song et al. 2019, Eq. 8, SSM-VR), per sample.

    ``lambda(t) [ v^T grad_x (v^T s_theta(x_t, t)) + 1/2 || s_theta(x_t, t) ||^2 ]``, averaged over
    ``n_projections`` probes ``v`` (Rademacher or Gaussian, ``E[v v^T] = I``). Its expectation is
    ``1/2 E || s_theta - grad log p_t ||^2 - 1/2 E || grad log p_t ||^2``: it needs no kernel, only
    samples of ``x_t``, drawn from the kernel when there is one and by forward Euler-Maruyama with
    ``simulation_steps`` otherwise. Default weighting: likelihood (``lambda = g^2``, uniform ``t``);
    ``proposal`` as in :func:`denoising_score_matching`.

    ``x0``: ``(B, *dims)``. Returns ``(B,)``; ``reduce="mean"`` divides by the data dimension.
    """
    weighting = LikelihoodWeighting() if weighting is None else weighting
    _check(sde, eps, reduce)
    if projection not in ("rademacher", "gaussian"):
        raise ValueError(f"projection must be 'rademacher' or 'gaussian', got {projection!r}")
    check_range("n_projections", n_projections, low=1, integer=True)
    drawn = _drawn(weighting, proposal)
    if getattr(drawn, "needs_kernel", False) and not sde.has_kernel:
        raise ValueError(f"{drawn!r} needs the SDE's kernel; use LikelihoodWeighting() with uniform t")
    t = drawn.sample_time(sde, x0.shape[0], eps, generator=generator, device=x0.device, dtype=x0.dtype)
    with torch.no_grad():
        x_t = sample_marginal(sde, x0, t, generator=generator, n_steps=simulation_steps)
    keep_graph = torch.is_grad_enabled()  # False in evaluation: no graph through the parameters
    with torch.enable_grad():  # the estimator differentiates the score in x, even in evaluation
        x_t = x_t.requires_grad_(True)
        score = score_fn(x_t, t)
        trace = torch.zeros(x0.shape[0], device=x0.device, dtype=x0.dtype)
        for _ in range(n_projections):
            v = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            if projection == "rademacher":
                v = v.sign()
            (grad_vs,) = torch.autograd.grad((score * v).sum(), x_t, create_graph=keep_graph)
            trace = trace + (grad_vs * v).reshape(x0.shape[0], -1).sum(dim=1)
    per_sample = trace / n_projections + 0.5 * score.reshape(x0.shape[0], -1).pow(2).sum(dim=1)
    if reduce == "mean":
        per_sample = per_sample / x0[0].numel()
    return drawn.weight(sde, t, eps) * per_sample
