"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", Sec. 3 and App. C): track a few power-function averages of the weights during training,
keep snapshots of them, and after training reconstruct the average of any width by least squares.

**Power-function EMA** (App. C.1). Averaging the weights ``theta_tau`` of all steps ``tau <= t``
with the kernel ``p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)`` on ``[0, t]`` is the
recursion (Eq. 127, one step at a time)

    theta_hat_t = beta_t theta_hat_(t-1) + (1 - beta_t) theta_t,   beta_t = (1 - 1/t)^(gamma + 1),

whose first update (``beta_1 = 0``) copies the weights. Exactly, not approximately: the weight of
step ``k`` in ``theta_hat_t`` is ``(1 - beta_k) prod_(j > k) beta_j = (k^(gamma+1) - (k-1)^(gamma+1))
/ t^(gamma+1)``, the kernel's mass on ``(k - 1, k]``, so ``theta_hat_t`` is the kernel integrated
against the piecewise-constant trajectory. The kernel's width relative to the length of training,
its standard deviation over ``t`` (Eq. 123), is

    sigma_rel = ((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))^(1/2),

so a profile is named by ``sigma_rel`` (the same fraction of the run however long it trains) and its
``gamma`` is the largest real root of ``gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + 12 -
sigma_rel^-2 = 0`` (Alg. 2). ``sigma_rel`` lies in ``(0, 12^(-1/2))``; ``gamma = 0`` is the plain mean.

**Reconstruction** (App. C.3, Alg. 3). Snapshots ``theta_hat_i`` of the profiles at steps ``t_i``
are averages with kernels ``p_i``; the average with a target kernel ``p`` (any ``sigma_rel``, ending at
the last snapshot's step) is approximated by ``sum_i x_i theta_hat_i``, with ``x`` minimising
``|| sum_i x_i p_i - p ||`` in ``L2[0, inf)``: the normal equations ``A x = b`` with
``A_ij = <p_i, p_j>``, ``b_i = <p_i, p>``, in closed form for two power-function kernels ending at
``t_a <= t_b`` (Eq. 151):

    <p_a, p_b> = (gamma_a + 1)(gamma_b + 1) / (gamma_a + gamma_b + 1) * (t_a / t_b)^gamma_b / t_b,

and ``x`` rescaled to sum to one. The reconstruction's relative kernel error ``|| sum x_i p_i - p ||
/ || p ||`` follows from the same inner products, and bounds the error of the weights by Cauchy-Schwarz.
With two profiles (``sigma_rel`` 0.05 and 0.10) and snapshots every twentieth of the run, a
``sigma_rel = 0.08`` average is reproduced to about 1e-5 of the trajectory's variation
(tests/test_posthoc_ema.py); the paper stores 2 x 256 snapshots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .ema import MovingAverage

SIGMA_REL_MAX = 12**-0.5
"""The widest profile, ``gamma -> 0`` (the uniform average over the whole run)."""

SNAPSHOT_DIR = "ema_snapshots"
"""The folder of a run's ``checkpoints/`` that holds the snapshots, one verified file per step."""


def check_sigma_rel(sigma_rel: float, name: str = "sigma_rel") -> float:
    """``sigma_rel`` as a float in ``(0, 12^(-1/2))``, or a ValueError naming ``name``."""
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) or not 0 < sigma_rel < SIGMA_REL_MAX:
        raise ValueError(
            f"{name} must be a number in (0, {SIGMA_REL_MAX:.4f}), the averaging kernel's width as a fraction of training "
            f"(EDM2 tracks 0.05 and 0.10); got {sigma_rel!r}"
        )
    return float(sigma_rel)


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The exponent ``gamma`` of the power-function profile of relative width ``sigma_rel`` (Alg. 2)."""
    t = check_sigma_rel(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - t, 12.0 - t])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def sigma_rel_from_gamma(gamma: float) -> float:
    """The relative width of the profile with exponent ``gamma >= 0`` (Eq. 123)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


class PowerFunctionEMA(MovingAverage):
    """The power-function average of the weights of relative width ``sigma_rel``: the decay of the
    update that follows ``n`` earlier ones is ``beta = (1 - 1/(n + 1))^(gamma + 1)`` (the module
    docstring); same layout and cost as :class:`~sde_diffusion.training.ema.EMA`."""

    def __init__(self, model: nn.Module, sigma_rel: float):
        super().__init__(model)
        self.sigma_rel = check_sigma_rel(sigma_rel)
        self.gamma = gamma_from_sigma_rel(self.sigma_rel)

    def decay_at(self, n: int) -> float:
        return (n / (n + 1)) ** (self.gamma + 1)


class PostHocEMA(nn.Module):
    """The profiles that post-hoc EMA tracks (``train.ema=posthoc``), one :class:`PowerFunctionEMA`
    per ``sigma_rels`` entry. :attr:`module`, the model that ``sde-train`` evaluates and saves as the
    run's EMA weights, is the first profile's; :meth:`snapshot` is what is kept for reconstruction."""

    def __init__(self, model: nn.Module, sigma_rels: Sequence[float] = (0.05, 0.10)):
        super().__init__()
        self.profiles = nn.ModuleList(PowerFunctionEMA(model, s) for s in sigma_rels)  # registered: state_dict, .to()
        self._profiles = cast(list[PowerFunctionEMA], list(self.profiles))  # the same, typed

    @property
    def sigma_rels(self) -> list[float]:
        return [p.sigma_rel for p in self._profiles]

    @property
    def module(self) -> nn.Module:
        return self._profiles[0].module

    @property
    def last_decay(self) -> float:
        return self._profiles[0].last_decay

    @property
    def description(self) -> str:
        """What the summary line says of :attr:`module`."""
        return f"post-hoc EMA's profile sigma_rel {self.sigma_rels[0]:g} of {', '.join(f'{s:g}' for s in self.sigma_rels)}"

    def update(self) -> None:
        for profile in self._profiles:
            profile.update()

    def snapshot(self, step: int) -> dict:
        """The profiles at ``step``: each one's parameters and the model's buffers (copied, not averaged)."""
        return {
            "step": int(step),
            "sigma_rel": self.sigma_rels,
            "parameters": [{name: p.detach() for name, p in profile.module.named_parameters()} for profile in self._profiles],
            "buffers": {name: b.detach() for name, b in self.module.named_buffers()},
        }


def write_snapshot(directory: Path, snapshot: dict) -> Path:
    """Write ``snapshot`` to ``directory/step-<step>.pt``, atomically and verified (:func:`save_checkpoint`)."""
    return save_checkpoint(Path(directory) / f"step-{snapshot['step']:09d}.pt", snapshot)


def snapshot_files(directory: Path) -> list[Path]:
    """The snapshot files in ``directory``, by step."""
    return sorted(Path(directory).glob("step-*.pt"))


def discard_snapshots_after(directory: Path, step: int) -> None:
    """Delete the snapshots of steps after ``step``: an interrupted run wrote them after its last
    checkpoint, and the resumed run writes them again."""
    for path in snapshot_files(directory):
        if int(path.stem.removeprefix("step-")) > step:
            path.unlink()


def load_snapshots(directory: Path) -> list[dict]:
    """Every snapshot in ``directory`` (verified, on the CPU), by step."""
    files = snapshot_files(directory)
    if not files:
        raise CheckpointError(
            f"{directory} holds no post-hoc EMA snapshots: the run was not trained with train.ema=posthoc"
            if not Path(directory).is_dir()
            else f"{directory} holds no post-hoc EMA snapshots"
        )
    return [load_checkpoint(path) for path in files]


def kernel_inner_products(t_a: Tensor, gamma_a: Tensor, t_b: Tensor, gamma_b: Tensor) -> Tensor:
    """``<p_a, p_b>`` of power-function kernels ending at ``t_a``, ``t_b`` with exponents ``gamma_a``,
    ``gamma_b`` (Eq. 151; broadcast, float64)."""
    t_a, gamma_a, t_b, gamma_b = (torch.as_tensor(v, dtype=torch.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    a_first = t_a <= t_b
    ratio = torch.where(a_first, t_a / t_b, t_b / t_a)
    power = torch.where(a_first, gamma_b, gamma_a)  # the exponent of the kernel that ends later
    return (gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1) * ratio**power / torch.maximum(t_a, t_b)


def posthoc_coefficients(steps: Tensor, gammas: Tensor, gamma: float, at: float) -> tuple[Tensor, float]:
    """The weights ``x`` ``(K,)`` of ``K`` stored averages (kernels ending at ``steps`` with exponents
    ``gammas``) that approximate the kernel of exponent ``gamma`` ending at ``at`` (Alg. 3: least
    squares, then rescaled to sum to one), and the approximation's relative L2 error."""
    steps, gammas = steps.to(torch.float64), gammas.to(torch.float64)
    a = kernel_inner_products(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    b = kernel_inner_products(steps, gammas, torch.tensor(at), torch.tensor(gamma))
    x = torch.linalg.lstsq(a, b[:, None], driver="gelsd").solution[:, 0]  # A is ill-conditioned with many snapshots
    x = x / x.sum()
    target = float(kernel_inner_products(torch.tensor(at), torch.tensor(gamma), torch.tensor(at), torch.tensor(gamma)))
    squared_error = float(x @ a @ x - 2 * x @ b) + target
    return x, math.sqrt(max(squared_error, 0.0) / target)


@dataclass
class Reconstruction:
    """A post-hoc EMA: the ``state`` (a model's ``state_dict``) of relative width ``sigma_rel`` at
    ``step``, made from ``n_snapshots`` snapshots with the relative kernel error ``kernel_error``."""

    state: dict[str, Tensor]
    sigma_rel: float
    step: int
    n_snapshots: int
    kernel_error: float


def reconstruct(snapshots: Sequence[dict], sigma_rel: float) -> Reconstruction:
    """The average of relative width ``sigma_rel`` at the last snapshot's step, as the least-squares
    combination of every profile of every snapshot (:func:`posthoc_coefficients`); the buffers are
    the last snapshot's (they are copied, not averaged)."""
    gamma = gamma_from_sigma_rel(sigma_rel)
    entries = [
        (s["step"], gamma_from_sigma_rel(width), params)
        for s in snapshots
        for width, params in zip(s["sigma_rel"], s["parameters"], strict=True)
    ]
    if not entries:
        raise ValueError("post-hoc EMA needs at least one snapshot")
    last = max(snapshots, key=lambda s: s["step"])
    x, error = posthoc_coefficients(
        torch.tensor([e[0] for e in entries]), torch.tensor([e[1] for e in entries]), gamma, float(last["step"])
    )
    state = {}
    for name, ref in entries[0][2].items():
        total = sum(float(w) * e[2][name].to(torch.float64) for w, e in zip(x, entries, strict=True))
        state[name] = torch.as_tensor(total).to(ref.dtype)
    state.update(last["buffers"])
    return Reconstruction(state, float(sigma_rel), int(last["step"]), len(snapshots), error)


def ema_weights(ema_state: dict) -> dict[str, Tensor]:
    """The averaged model's ``state_dict`` in a checkpoint's ``ema`` entry: the EMA's
    (``module.<name>``), or post-hoc EMA's first profile (``profiles.0.module.<name>``)."""
    prefix = "profiles.0.module." if any(k.startswith("profiles.") for k in ema_state) else "module."
    return {k.removeprefix(prefix): v for k, v in ema_state.items() if k.startswith(prefix)}
