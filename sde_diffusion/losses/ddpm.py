"""iDDPM's hybrid loss for learned variances and its loss-aware sampling of steps (Nichol & Dhariwal 2021).

``L_hybrid = L_simple + lambda L_vlb`` (Sec. 3.1, ``lambda = 0.001``): ``L_simple`` trains the noise
prediction, ``L_vlb = sum_i L_{i-1}`` (:mod:`.vlb`) trains the variance interpolation through a
stopped gradient on the mean. Per sample, with the step ``i`` drawn from ``p(i)``,

    loss = w(i) [ mean_d (eps - eps_theta)^2 + lambda T L_{i-1} / (D ln 2) ],   w(i) = 1 / (T p(i)),

both terms per dimension and ``L_{i-1}`` in bits (iDDPM's code: ``vb * T / 1000``), so that
``E[loss] = E_i mean_d (eps - eps_theta)^2 + lambda L_vlb / (D ln 2)`` for every ``p``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_range
from .._shapes import expand_like
from ..sdes.base import SDE
from .proposals import discrete_chain
from .vlb import model_prediction, step_terms


class LossAwareStepSampler:
    """Draws steps ``i`` in ``1..T`` with ``p(i) ∝ sqrt(E[L_i^2])`` over the last ``history`` values of
    each step's loss, mixed with ``uniform_mix`` of the uniform law; uniform until every step has
    ``history`` values (iDDPM's ``LossSecondMomentResampler``, Sec. 3.3). Its state (the per-step
    history) is checkpointed with the run through :meth:`state_dict`."""

    def __init__(self, history: int = 10, uniform_mix: float = 0.001):
        self.history = check_range("history", history, low=1, integer=True)
        self.uniform_mix = check_range("uniform_mix", uniform_mix, low=0, high=1)
        self.losses: Tensor | None = None  # (T, history), lazily sized by the first chain seen
        self.seen: Tensor | None = None  # (T,) int64

    def _ensure(self, T: int) -> tuple[Tensor, Tensor]:
        if self.losses is None or self.seen is None or self.losses.shape[0] != T:
            self.losses = torch.zeros(T, self.history, dtype=torch.float64)
            self.seen = torch.zeros(T, dtype=torch.long)
        return self.losses, self.seen

    def probabilities(self, T: int) -> Tensor:
        """``p(i)`` ``(T,)`` float64 for steps ``1..T``."""
        losses, seen = self._ensure(T)
        if bool((seen < self.history).any()):
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        p = losses.pow(2).mean(dim=1).sqrt()
        p = p / p.sum()
        return p * (1 - self.uniform_mix) + self.uniform_mix / T

    def sample(self, T: int, batch: int, *, generator=None, device=None) -> tuple[Tensor, Tensor]:
        """``(i, w)``: steps ``(B,)`` int64 in ``1..T`` and their weights ``1 / (T p(i))`` ``(B,)`` float64."""
        p = self.probabilities(T)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(batch, generator=generator, device=gen_device, dtype=torch.float64).cpu()
        idx = torch.searchsorted(p.cumsum(0), u * float(p.sum()), right=True).clamp(max=T - 1)
        return (idx + 1).to(device), (1.0 / (T * p[idx])).to(device)

    def update(self, i: Tensor, loss: Tensor) -> None:
        """Record the losses ``(B,)`` of steps ``i`` ``(B,)``: each step keeps its last ``history``
        values, in batch order (vectorised: steps drawn twice in a batch write distinct slots)."""
        T = self.losses.shape[0] if self.losses is not None else int(i.max())
        losses, seen = self._ensure(T)
        row = i.detach().cpu() - 1
        order = torch.argsort(row, stable=True)
        row, value = row[order], loss.detach().cpu().to(torch.float64)[order]
        _, counts = torch.unique_consecutive(row, return_counts=True)
        starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        rank, group = torch.arange(len(row)) - starts, torch.repeat_interleave(counts, counts)
        keep = rank >= group - self.history  # only the last `history` of a step's draws survive
        losses[row[keep], (seen[row[keep]] + rank[keep]) % self.history] = value[keep]
        seen.index_add_(0, row, torch.ones_like(row))

    def state_dict(self) -> dict:
        return {"losses": self.losses, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.losses, self.seen = state["losses"], state["seen"]

    def __repr__(self) -> str:
        return f"LossAwareStepSampler(history={self.history}, uniform_mix={self.uniform_mix})"


class HybridLoss:
    """``loss_fn(score_fn, sde, x0, generator=...) -> (B,)``: iDDPM's hybrid loss (module docstring)
    on a discrete-time SDE (:class:`~sde_diffusion.sdes.DDPMSDE`) with a learned-variance model
    (:class:`~sde_diffusion.models.LearnedVarianceParameterization`).

    Args:
        vlb_weight: ``lambda`` (0.001 in iDDPM).
        importance: draw the steps from a :class:`LossAwareStepSampler` fed with the ``L_vlb`` terms
            (the learning signal whose variance the sampler reduces), else uniformly.
        levels, interval: data on ``K`` levels of ``interval`` use the discretized decoder for
            ``L_0`` (digits: 17); None uses the Gaussian density.

    Training (gradients enabled) draws steps from the sampler and records their losses; evaluation
    (``torch.no_grad``, as the Trainer's held-out loss) draws them uniformly and records nothing, so
    held-out values are comparable between runs. ``state_dict`` holds the sampler's history.
    """

    def __init__(
        self, vlb_weight: float = 0.001, importance: bool = False, levels: int | None = None, interval: tuple[float, float] = (-1.0, 1.0)
    ):
        self.vlb_weight = check_range("vlb_weight", vlb_weight, low=0)
        self.sampler = LossAwareStepSampler() if importance else None
        if levels is not None:
            check_range("levels", levels, low=2, integer=True)
        self.levels = levels
        self.interval = (float(interval[0]), float(interval[1]))

    def __call__(self, score_fn, sde: SDE, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        chain = discrete_chain(sde, "loss=ddpm_hybrid")
        T, batch = chain.T, x0.shape[0]
        training = torch.is_grad_enabled()
        if self.sampler is not None and training:
            i, w = self.sampler.sample(T, batch, generator=generator, device=x0.device)
        else:
            i = torch.randint(1, T + 1, (batch,), generator=generator, device=x0.device)
            w = torch.ones(batch, dtype=torch.float64, device=x0.device)
        t = i.to(x0.dtype) / T
        m, s = sde.kernel(t)
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_i = expand_like(m, x0) * x0 + expand_like(s, x0) * z
        eps, v = model_prediction(score_fn, sde, x_i, t, "learned")
        assert v is not None
        simple = (eps - z).pow(2).reshape(batch, -1).mean(dim=1)
        log_var = chain.reverse_log_variance(i, "learned", v)
        dim = x0[0].numel()
        vlb_bits = step_terms(chain, x0, x_i, i, eps.detach(), log_var, self.levels, self.interval) / (dim * math.log(2.0))
        if self.sampler is not None and training:
            self.sampler.update(i, vlb_bits)
        return w.to(x0.dtype) * (simple + self.vlb_weight * T * vlb_bits)

    def state_dict(self) -> dict:
        return {} if self.sampler is None else {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.sampler is not None and "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])

    def __repr__(self) -> str:
        return f"HybridLoss(vlb_weight={self.vlb_weight}, importance={self.sampler is not None}, levels={self.levels})"
