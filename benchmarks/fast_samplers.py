"""Few-step samplers side by side with diffusers and k-diffusion, on Gaussian mixtures with exact scores.

Problems: the 2-D ring of ``benchmarks/samplers.py``, a 16-D anisotropic mixture (8 components,
covariance eigenvalues 0.05 to ~0.5) and a 64-D mixture shaped as ``(1, 8, 8)`` images (the score
reshapes). SDEs: VP (``sd.VPSDE()``, grids end at ``eps = 1e-3``) and EDM sigma-time
(``sd.EDMSDE()``, grids end at ``eps = sigma_min = 0.002``). Every sampler aims at the data
distribution ``p_0``, at NFE budgets 5, 10, 20 and 50, from the same standard normal prior draws
``z`` (each sampler scales them by its own prior standard deviation), with the exact score of the
mixture at whatever noise level it asks for.

Ours: every shipped fast sampler of ``sde_diffusion.samplers`` on its grids, with
``denoise_to_zero=True``: the last data prediction is returned, and its evaluation counts in the
budget (a sampler of one NFE a step gets ``budget - 1`` steps, Heun and EDM's sampler
``budget // 2``, DPM-Solver++(2S) ``(budget - 1) // 2``). A sampler, grid or keyword that this
version of the package lacks is skipped with a printed note; one that raises is recorded with its error.

Peers, all in the sigma units of EDM (``y = x / m``, ``sigma = s / m``), where the exact denoiser
of the mixture is ``D(y; sigma) = y + sigma^2 grad log p_sigma(y)``:

- diffusers' ``DPMSolverMultistepScheduler`` (2M, 3M), ``UniPCMultistepScheduler`` (orders 2 and 3,
  bh2 with the corrector), ``DEISMultistepScheduler`` (orders 2 and 3), ``EulerDiscreteScheduler``
  and ``HeunDiscreteScheduler``, each with its default spacing and with ``use_karras_sigmas=True``.
  Their 1000-entry noise table (``trained_betas``) is the SDE's: for VP
  ``abar_n = m(t_n)^2`` at ``t_n = (n + 1) / 1000``, so ``abar_0`` is our ``eps`` and ``abar_999``
  our ``T``; for EDM ``abar_n = 1 / (1 + sigma_n^2)`` with ``sigma_n`` log-uniform from
  ``sigma_min`` to ``sigma_max``. The ``i``-th model call of the sampling loop is answered at the
  scheduler's own noise level ``sigma = scheduler.sigmas[i]`` (not at a rounded timestep): the model
  input ``u`` is ``y / sqrt(1 + sigma^2)``, so ``y = u sqrt(1 + sigma^2)``, and the model returns the
  epsilon prediction ``(y - D(y; sigma)) / sigma``, which is ``-s score`` of the VP kernel at that
  ``abar``. The loop starts from ``z * init_noise_sigma``. DEIS ends at ``sigma_min``, not at 0: it
  gets ``budget - 1`` steps and one more exact denoiser call at its last noise level; Heun spends
  ``2N - 1`` calls on ``N`` steps, so it gets ``(budget + 1) // 2`` steps.
- For EDM also diffusers' ``EDMDPMSolverMultistepScheduler`` (2M, 3M) and ``EDMEulerScheduler``
  (Karras sigmas on ``[sigma_min, sigma_max]``, ``rho = 7``): the model sees EDM's preconditioned
  input ``y / sqrt(sigma^2 + sigma_data^2)`` and returns the network output ``F`` with
  ``D = c_skip y + c_out F`` (EDM Table 1: ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)``,
  ``c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)``).
- k-diffusion's ``sample_euler``, ``sample_heun``, ``sample_dpm_2``, ``sample_lms``,
  ``sample_dpmpp_2m``, ``sample_dpmpp_2m_sde`` and ``sample_dpmpp_3m_sde`` (``eta = 1``), with
  ``model(y, sigma) = D(y; sigma)`` on ``get_sigmas_karras(n, sigma_min, sigma_max, rho=7)`` (which
  ends at 0), from ``z * sigmas[0]``; the stochastic ones draw their noise from a seeded generator.
  Only ``k_diffusion/sampling.py`` is loaded (the package's ``__init__`` imports its training stack:
  torchvision, scikit-image, wandb, ...), with the one helper it takes from ``k_diffusion.utils``.

Metrics per (problem, SDE, sampler, grid, budget):

- log-density gap per dimension: the mean exact ``log p_0`` of the samples minus that of exact data
  samples, over ``D``. The exact data samples are the same prior draws carried to ``t = 0`` by the
  probability-flow ODE with the exact score, solved to convergence (DPM-Solver++(3M), 400 steps on
  the log-SNR grid to ``sigma = 1e-4``, then the exact denoiser; the change of its gap from 200
  steps is printed, about 7 times its error at third order). They are distributed as the data (the
  flow keeps the KL divergence between the prior and ``p_T``, about 1e-5 nats/dim or less here;
  the reference's gap to an independent data set is printed as a check) and paired with every
  deterministic sampler's samples, so the noise of the draws cancels and the gap is resolved far
  below the spread of two independent exact sets (less so for stochastic samplers). The standard
  error of each gap is given beside it, and the head-to-head table gives the standard error of the
  difference between the best of ours and the best peer (paired per sample).
- sliced W2 (128 random directions, the first 4000 samples) to a fresh set of exact data samples.
- wall time of the sampler call (score included; single thread).

Beside them: the statistical floor (both metrics between two independent exact sample sets of the
same size, mean and spread over 5 pairs), and the ideal value of a denoise-to-zero sampler: exact
samples of ``p_eps`` at the smallest noise level, denoised by the exact Tweedie formula.

The targets (issue 10): at 10 and at 20 NFE the best of ours has a smaller |gap| than every peer on
every mixture and SDE; |gap| <= 0.02 nats/dim at 10 NFE and <= 0.005 at 20.

    pip install torch==2.13.0 -e ".[bench]"      # the peers: diffusers
    pip install --no-deps k-diffusion            # optional peer; its own dependencies are not needed
    python benchmarks/fast_samplers.py           # full run, about 11 minutes on one core
    python benchmarks/fast_samplers.py --quick   # smoke run (about 35 seconds), writes fast_samplers_quick.*
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import platform
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from samplers import random_mixture, ring_mixture  # the sibling benchmark's problems
from torch import Tensor

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion import timesteps

RESULTS = Path(__file__).parent / "results"
BUDGETS = (5, 10, 20, 50)
TARGETS = {10: 0.02, 20: 0.005}
"""The issue's |gap| targets in nats/dim at 10 and 20 NFE."""
SIGMA_TIME = sd.EDMSDE(sigma_min=1e-6, sigma_max=1e4)
"""The kernel ``m = 1, s = sigma``: the mixture's exact score at any noise level ``sigma``, in ``y`` units."""
REFERENCE_SIGMA = 1e-4
SW2_SAMPLES, SW2_DIRECTIONS = 4000, 128
SEED_PRIOR, SEED_DATA, SEED_NOISE = 2, 1, 3


# ------------------------------------------------------------------------------------- problems
def problems() -> dict[str, sd.GaussianMixture]:
    image = random_mixture(64)
    return {
        "2-D ring": ring_mixture(),
        "16-D anisotropic": random_mixture(16),
        "64-D images": sd.GaussianMixture(image.weights, image.means, image.covs, event_shape=(1, 8, 8)),
    }


def sdes() -> dict[str, tuple[sd.SDE, float]]:
    """Each SDE with the time its grids end at (``eps``)."""
    edm = sd.EDMSDE()
    return {"VP": (sd.VPSDE(), 1e-3), "EDM": (edm, edm.sigma_min)}


def expand(v: Tensor, x: Tensor) -> Tensor:
    """A scalar or ``(B,)`` tensor as ``(B, 1, ..., 1)`` in ``x``'s dtype, to broadcast against ``x``."""
    v = torch.as_tensor(v, dtype=x.dtype).reshape(-1).expand(len(x))
    return v.reshape(-1, *[1] * (x.dim() - 1))


@dataclass
class Setting:
    """One problem under one SDE: its noise range, the shared prior draws, the exact denoiser and
    the judge (reference samples, floors, the ideal value)."""

    problem: str
    dist: sd.GaussianMixture
    sde_name: str
    sde: sd.SDE
    eps: float
    n: int
    reference_steps: int
    summary: dict = field(init=False)

    def __post_init__(self):
        m, s = self.sde.kernel(torch.tensor([self.sde.T, self.eps], dtype=torch.float64))
        self.sigma_max, self.sigma_min = (s / m).tolist()
        self.score_fn = self.dist.score_fn(self.sde)
        self.z = torch.randn(self.n, *self.dist.event_shape, generator=torch.Generator().manual_seed(SEED_PRIOR))
        g = torch.Generator().manual_seed(SEED_DATA)
        self.directions = torch.nn.functional.normalize(torch.randn(SW2_DIRECTIONS, self.dist.dim, generator=g, dtype=torch.float64), dim=1)
        self.data = self.dist.sample(self.n, generator=g, dtype=torch.float64)
        self.data_projections = self.projections(self.data)
        start = time.perf_counter()
        self.reference = self.reference_flow(self.reference_steps)
        self.reference_logp = self.logp(self.reference)
        error = (self.logp(self.reference_flow(self.reference_steps // 2)) - self.reference_logp).mean().item() / self.dist.dim
        floor = [self.independent_distances(g) for _ in range(5)]
        ideal = self.ideal(g)
        self.summary = {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "floor": {
                k: [torch.tensor([f[k] for f in floor]).mean().item(), torch.tensor([f[k] for f in floor]).std().item()] for k in floor[0]
            },
            "ideal": ideal,
            "reference": {
                "solver": "dpm_solver_pp(order=3) on the log-SNR grid to sigma 1e-4, then the exact denoiser",
                "steps": self.reference_steps,
                "gap_change_from_half_the_steps": error,
                "gap_to_fresh_data": self.independent_gap(self.reference),
                "seconds": time.perf_counter() - start,
            },
        }

    # ------------------------------------------------------------------------ the exact model
    def denoise(self, y: Tensor, sigma: float | Tensor) -> Tensor:
        """Exact ``D(y; sigma) = y + sigma^2 grad log p_sigma(y)`` for ``y = x_0 + sigma z``, in ``y``'s dtype."""
        sigma = torch.as_tensor(sigma, dtype=y.dtype).reshape(-1).expand(len(y))
        return y + expand(sigma, y) ** 2 * self.dist.score(y, sigma, SIGMA_TIME)

    def reference_flow(self, steps: int) -> Tensor:
        """The prior draws carried to ``t = 0`` by the converged probability-flow ODE (see the module docstring)."""
        t_end = float(self.sde.time_from_log_snr(torch.tensor(-2.0 * math.log(REFERENCE_SIGMA), dtype=torch.float64)))
        ts = timesteps.log_snr_time_grid(self.sde, steps, t_end, dtype=torch.float32)
        x = S.dpm_solver_pp(self.sde, self.score_fn, self.sde.prior_std * self.z, ts, order=3).samples
        m, s = self.sde.kernel(torch.tensor(t_end, dtype=torch.float64))
        return self.denoise(x / float(m), float(s / m))

    # -------------------------------------------------------------------------------- metrics
    def logp(self, x: Tensor) -> Tensor:
        """Exact ``log p_0`` per sample (float64)."""
        return self.dist.log_prob(x.double())

    def projections(self, x: Tensor) -> Tensor:
        """The first ``SW2_SAMPLES`` samples projected on each direction and sorted, ``(L, n')``."""
        x = x[:SW2_SAMPLES].double().reshape(min(len(x), SW2_SAMPLES), -1)
        return (self.directions @ x.T).sort(dim=1).values

    def sw2(self, x: Tensor, to: Tensor | None = None) -> float:
        """Sliced W2 from ``x`` to the data set (or to ``to``): the RMS over directions of the 1-D W2
        of the projections, whose optimal coupling matches them in sorted order."""
        reference = self.data_projections if to is None else self.projections(to)
        return (self.projections(x) - reference).pow(2).mean().sqrt().item()

    def judge(self, x: Tensor) -> tuple[dict, Tensor | None]:
        """Gap per dimension against the paired reference samples, its standard error and SW2; and
        the per-sample log-density differences per dimension ``(n,)`` (None for non-finite samples)."""
        if not torch.isfinite(x).all():
            return {"gap": float("nan"), "gap_se": float("nan"), "sw2": float("nan")}, None
        diff = (self.logp(x) - self.reference_logp) / self.dist.dim
        return {"gap": diff.mean().item(), "gap_se": diff.std().item() / math.sqrt(len(diff)), "sw2": self.sw2(x)}, diff

    def independent_gap(self, x: Tensor) -> list[float]:
        """Gap per dimension of ``x`` to the fresh data set, unpaired: mean and standard error."""
        a, b = self.logp(x) / self.dist.dim, self.logp(self.data) / self.dist.dim
        return [(a.mean() - b.mean()).item(), math.sqrt((a.var() + b.var()).item() / len(a))]

    def independent_distances(self, g: torch.Generator) -> dict:
        """Both metrics between two independent exact sample sets of size ``n`` (one floor pair)."""
        a, b = self.dist.sample(self.n, generator=g, dtype=torch.float64), self.dist.sample(self.n, generator=g, dtype=torch.float64)
        gap = (self.logp(a).mean() - self.logp(b).mean()).item() / self.dist.dim
        return {"gap": gap, "sw2": self.sw2(a, to=b)}

    def ideal(self, g: torch.Generator) -> dict:
        """Exact samples of ``p_eps``, denoised by the exact Tweedie formula: the best a denoise-to-zero
        sampler can reach. Its gap is paired with the clean samples it was noised from."""
        x0 = self.dist.sample(self.n, generator=g, dtype=torch.float32)
        y = x0 + self.sigma_min * torch.randn(x0.shape, generator=g)
        x = self.denoise(y, self.sigma_min)
        diff = (self.logp(x) - self.logp(x0)) / self.dist.dim
        return {"gap": diff.mean().item(), "gap_se": diff.std().item() / math.sqrt(self.n), "sw2": self.sw2(x)}


class CountingModel:
    """A model wrapper that counts its calls (the NFE of a peer)."""

    def __init__(self, model: Callable[..., Tensor]):
        self.model, self.nfe = model, 0

    def __call__(self, *args) -> Tensor:
        self.nfe += 1
        return self.model(*args)


# ------------------------------------------------------------------------------------------ ours
@dataclass
class Ours:
    """One of our samplers on one grid. ``nfe_per_step`` and ``nfe_extra`` give its NFE,
    ``nfe_per_step * N + nfe_extra`` with ``denoise_to_zero``, so a budget buys
    ``(budget - nfe_extra) // nfe_per_step`` steps."""

    name: str
    function: str
    options: dict
    grid: str
    nfe_per_step: int = 1
    nfe_extra: int = 1
    stochastic: bool = False
    family: str = "ours"

    @property
    def schedule(self) -> str:
        return self.grid.removesuffix("_time_grid")

    def missing(self) -> str | None:
        for module, name in ((S, self.function), (timesteps, self.grid)):
            if not hasattr(module, name):
                return f"{module.__name__}.{name} does not exist in this version"
        return None

    def run(self, setting: Setting, budget: int) -> tuple[Tensor, int]:
        steps = (budget - self.nfe_extra) // self.nfe_per_step
        ts = getattr(timesteps, self.grid)(setting.sde, steps, setting.eps, dtype=torch.float32)
        out = getattr(S, self.function)(
            setting.sde,
            setting.score_fn,
            setting.sde.prior_std * setting.z,
            ts,
            generator=torch.Generator().manual_seed(SEED_NOISE),
            denoise_to_zero=True,
            **self.options,
        )
        return out.samples, out.nfe


def ours() -> list[Ours]:
    solvers = [
        ("ddim", "ddim", {}, 1, 1),
        ("heun", "heun", {}, 2, 0),
        ("dpm_solver++ 2M", "dpm_solver_pp", {"order": 2}, 1, 1),
        ("dpm_solver++ 3M", "dpm_solver_pp", {"order": 3}, 1, 1),
        ("dpm_solver++ 2S", "dpm_solver_2s", {}, 2, 1),
        ("unipc-2 bh1", "unipc", {"order": 2, "variant": "bh1"}, 1, 1),
        ("unipc-2 bh2", "unipc", {"order": 2, "variant": "bh2"}, 1, 1),
        ("unipc-3 bh2", "unipc", {"order": 3, "variant": "bh2"}, 1, 1),
        ("dpm_solver 3M (noise), lower-order final", "dpm_solver_pp", {"order": 3, "prediction": "noise", "lower_order_final": True}, 1, 1),
        (
            "dpm_solver 3M (noise), no lower-order final",
            "dpm_solver_pp",
            {"order": 3, "prediction": "noise", "lower_order_final": False},
            1,
            1,
        ),
        ("unipc-2 bh2 (noise)", "unipc", {"order": 2, "variant": "bh2", "prediction": "noise"}, 1, 1),
        ("unipc-3 bh2 (noise)", "unipc", {"order": 3, "variant": "bh2", "prediction": "noise"}, 1, 1),
        ("ipndm", "ipndm", {"order": 4}, 1, 1),
        ("ipndm fixed", "ipndm", {"order": 4, "coefficients": "fixed"}, 1, 1),
    ]
    entries = [
        Ours(name, fn, opts, grid, per, extra) for name, fn, opts, per, extra in solvers for grid in ("log_snr_time_grid", "edm_time_grid")
    ]
    entries += [
        Ours(name, fn, opts, grid)
        for name, fn, opts, _, _ in solvers
        if name in ("dpm_solver++ 3M", "unipc-2 bh2", "ipndm")
        for grid in ("uniform_time_grid", "quadratic_time_grid")
    ]
    return entries + [
        Ours("dpm_solver++ 2M SDE", "dpm_solver_sde", {"order": 2}, "log_snr_time_grid", stochastic=True),
        Ours("edm_sde churn 40", "edm_sde", {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0}, "edm_time_grid", 2, 0, stochastic=True),
    ]


# ------------------------------------------------------------------------------------- diffusers
@dataclass
class Diffusers:
    """A diffusers scheduler driven by the exact denoiser (see the module docstring)."""

    name: str
    cls: str
    options: dict
    schedule: str = "default"
    calls_per_step: int = 1
    final_denoise: bool = False
    """The scheduler stops at its smallest noise level, not at 0 (DEIS): it gets one step fewer and
    one exact denoiser call there at the end."""
    edm_only: bool = False
    stochastic: bool = False
    family: str = "diffusers"

    @property
    def edm_preconditioned(self) -> bool:
        return self.cls.startswith("EDM")

    def missing(self) -> str | None:
        if importlib.util.find_spec("diffusers") is None:
            return "diffusers is not installed (pip install -e '.[bench]')"
        import diffusers

        return None if hasattr(diffusers, self.cls) else f"diffusers {diffusers.__version__} has no {self.cls}"

    def scheduler(self, setting: Setting):
        import diffusers

        cls = getattr(diffusers, self.cls)
        if self.edm_preconditioned:
            return cls(sigma_min=setting.sigma_min, sigma_max=setting.sigma_max, **self.options)
        if setting.sde_name == "VP":
            m, _ = setting.sde.kernel(setting.eps + (setting.sde.T - setting.eps) * torch.arange(1000, dtype=torch.float64) / 999)
            abar = m**2
        else:
            sigma = torch.logspace(math.log10(setting.sigma_min), math.log10(setting.sigma_max), 1000, dtype=torch.float64)
            abar = 1.0 / (1.0 + sigma**2)
        betas = 1.0 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return cls(num_train_timesteps=1000, trained_betas=betas.numpy(), **self.options)

    def run(self, setting: Setting, budget: int) -> tuple[Tensor, int]:
        sch = self.scheduler(setting)
        steps = budget - 1 if self.final_denoise else (budget + self.calls_per_step - 1) // self.calls_per_step
        sch.set_timesteps(steps)
        model = CountingModel(setting.denoise)
        c = float(sch.config.get("sigma_data", 1.0)) if self.edm_preconditioned else 1.0
        x = setting.z * sch.init_noise_sigma
        for i, t in enumerate(sch.timesteps):
            sigma = sch.sigmas[i].to(x.dtype)
            u = sch.scale_model_input(x, t)
            y = u * (sigma**2 + c**2).sqrt()
            d = model(y, sigma)
            if self.edm_preconditioned:
                out = (d - c**2 / (sigma**2 + c**2) * y) / (sigma * c / (sigma**2 + c**2).sqrt())
            else:
                out = (y - d) / sigma
            x = sch.step(out, t, x).prev_sample
        if self.final_denoise:  # x is in the VP form y / sqrt(1 + sigma^2) at the last sigma
            sigma_end = sch.sigmas[-1].to(x.dtype)
            x = model(x * (sigma_end**2 + 1).sqrt(), sigma_end)
        return x, model.nfe


def diffusers_peers() -> list[Diffusers]:
    schedulers = [
        ("DPMSolverMultistep 2M", "DPMSolverMultistepScheduler", {"solver_order": 2}, 1, False),
        ("DPMSolverMultistep 3M", "DPMSolverMultistepScheduler", {"solver_order": 3}, 1, False),
        ("UniPCMultistep 2", "UniPCMultistepScheduler", {"solver_order": 2}, 1, False),
        ("UniPCMultistep 3", "UniPCMultistepScheduler", {"solver_order": 3}, 1, False),
        ("DEISMultistep 2", "DEISMultistepScheduler", {"solver_order": 2}, 1, True),
        ("DEISMultistep 3", "DEISMultistepScheduler", {"solver_order": 3}, 1, True),
        ("EulerDiscrete", "EulerDiscreteScheduler", {}, 1, False),
        ("HeunDiscrete", "HeunDiscreteScheduler", {}, 2, False),
    ]
    peers = [
        Diffusers(name, cls, {**opts, **extra}, schedule, calls, final_denoise)
        for name, cls, opts, calls, final_denoise in schedulers
        for schedule, extra in (("default", {}), ("karras", {"use_karras_sigmas": True}))
    ]
    return peers + [
        Diffusers("EDMDPMSolverMultistep 2M", "EDMDPMSolverMultistepScheduler", {"solver_order": 2}, "karras", edm_only=True),
        Diffusers("EDMDPMSolverMultistep 3M", "EDMDPMSolverMultistepScheduler", {"solver_order": 3}, "karras", edm_only=True),
        Diffusers("EDMEuler", "EDMEulerScheduler", {}, "karras", edm_only=True),
    ]


# ----------------------------------------------------------------------------------- k-diffusion
def k_diffusion_sampling() -> types.ModuleType | str:
    """``k_diffusion.sampling`` without the package's ``__init__`` (which imports its training stack),
    or the reason it cannot be loaded. ``sampling.py`` takes only ``append_dims`` from ``utils``."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.submodule_search_locations is None:
        return "k-diffusion is not installed (pip install --no-deps k-diffusion)"
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x.reshape(*x.shape, *[1] * (n - x.dim()))
    package.utils = utils
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    try:
        import k_diffusion.sampling as sampling
    except Exception as error:  # noqa: BLE001 - any import failure means: skip this peer
        for name in ("k_diffusion", "k_diffusion.utils", "k_diffusion.sampling"):
            sys.modules.pop(name, None)
        return f"k_diffusion.sampling cannot be imported: {type(error).__name__}: {error}"
    return sampling


@dataclass
class KDiffusion:
    """A k-diffusion sampler on Karras sigmas, with ``model(y, sigma) = D(y; sigma)``."""

    function: str
    calls_per_step: int = 1
    stochastic: bool = False
    schedule: str = "karras"
    family: str = "k-diffusion"

    @property
    def name(self) -> str:
        return self.function.removeprefix("sample_")

    def missing(self) -> str | None:
        sampling = k_diffusion_sampling()
        if isinstance(sampling, str):
            return sampling
        return None if hasattr(sampling, self.function) else f"k_diffusion.sampling has no {self.function}"

    def run(self, setting: Setting, budget: int) -> tuple[Tensor, int]:
        sampling = k_diffusion_sampling()
        assert not isinstance(sampling, str)
        steps = (budget + self.calls_per_step - 1) // self.calls_per_step  # the last step, to sigma = 0, is one call
        sigmas = sampling.get_sigmas_karras(steps, setting.sigma_min, setting.sigma_max, rho=7.0)
        model = CountingModel(setting.denoise)
        x = setting.z * sigmas[0]
        options = {}
        if self.stochastic:
            g, shape = torch.Generator().manual_seed(SEED_NOISE), x.shape
            options["noise_sampler"] = lambda sigma, sigma_next: torch.randn(shape, generator=g)
        x = getattr(sampling, self.function)(model, x, sigmas, disable=True, **options)
        return x, model.nfe


def k_diffusion_peers() -> list[KDiffusion]:
    return [
        KDiffusion("sample_euler"),
        KDiffusion("sample_heun", 2),
        KDiffusion("sample_dpm_2", 2),
        KDiffusion("sample_lms"),
        KDiffusion("sample_dpmpp_2m"),
        KDiffusion("sample_dpmpp_2m_sde", stochastic=True),
        KDiffusion("sample_dpmpp_3m_sde", stochastic=True),
    ]


# ------------------------------------------------------------------------------------------- run
def run_setting(setting: Setting, solvers: list, budgets, notes: dict, log) -> tuple[list[dict], list[Tensor | None]]:
    """Every solver at every budget on one setting: the rows, and each row's per-sample gaps."""
    rows, diffs = [], []
    for solver in solvers:
        if solver.family == "diffusers" and solver.edm_only and setting.sde_name != "EDM":
            continue
        label = f"{solver.family} {solver.name} [{solver.schedule}]"
        if (reason := solver.missing()) is not None:
            notes.setdefault(label, f"skipped: {reason}")
            continue
        for budget in budgets:
            row = {
                "problem": setting.problem,
                "sde": setting.sde_name,
                "family": solver.family,
                "solver": solver.name,
                "schedule": solver.schedule,
                "stochastic": solver.stochastic,
                "budget": budget,
            }
            start = time.perf_counter()
            try:
                with torch.no_grad():
                    x, nfe = solver.run(setting, budget)
            except Exception as error:  # noqa: BLE001 - a sampler that raises is recorded, the benchmark goes on
                row.update(
                    nfe=None,
                    seconds=time.perf_counter() - start,
                    gap=float("nan"),
                    gap_se=float("nan"),
                    sw2=float("nan"),
                    error=f"{type(error).__name__}: {error}",
                )
                notes.setdefault(f"{label} on {setting.sde_name}", f"raised {row['error']}")
                log(f"{setting.sde_name:>3} {setting.problem:<17} {label:<48} budget {budget:>2}  {row['error'][:90]}")
                rows.append(row)
                diffs.append(None)
                continue
            row.update(nfe=nfe, seconds=time.perf_counter() - start)
            metrics, diff = setting.judge(x)
            row.update(metrics)
            rows.append(row)
            diffs.append(diff)
            log(
                f"{setting.sde_name:>3} {setting.problem:<17} {label:<48} budget {budget:>2} NFE {nfe:>2}  "
                f"gap {row['gap']:+.5f} ± {row['gap_se']:.5f}  SW2 {row['sw2']:.4f}  {row['seconds']:.2f}s"
            )
    return rows, diffs


def head_to_head(rows: list[dict], diffs: list[Tensor | None], budget: int) -> dict:
    """The best of ours and the best peer at ``budget`` (smallest finite |gap|), and the margin
    ``|gap_ours| - |gap_peer|`` with its standard error from the paired per-sample gaps."""

    def best(ours_side: bool) -> int | None:
        pool = [i for i, r in enumerate(rows) if r["budget"] == budget and (r["family"] == "ours") == ours_side and diffs[i] is not None]
        return min(pool, key=lambda i: abs(rows[i]["gap"])) if pool else None

    a, b = best(True), best(False)
    line = {"budget": budget, "ours": None if a is None else rows[a], "peer": None if b is None else rows[b]}
    if a is not None and b is not None:
        da, db = diffs[a], diffs[b]
        assert da is not None and db is not None
        margin = math.copysign(1.0, rows[a]["gap"]) * da - math.copysign(1.0, rows[b]["gap"]) * db
        line.update(margin=margin.mean().item(), margin_se=margin.std().item() / math.sqrt(len(margin)))
    return line


def target_checks(key: str, line: dict) -> list[dict]:
    """The issue's two targets at one budget of one setting: the numbers and whether each is met."""
    ours, peer, budget = line["ours"], line["peer"], line["budget"]
    if budget not in TARGETS or ours is None:
        return []
    checks = [
        {
            "setting": key,
            "budget": budget,
            "target": f"|gap| of the best of ours <= {TARGETS[budget]}",
            "ours": abs(ours["gap"]),
            "met": abs(ours["gap"]) <= TARGETS[budget],
        }
    ]
    if peer is not None:
        checks.append(
            {
                "setting": key,
                "budget": budget,
                "target": "best of ours below every peer",
                "ours": abs(ours["gap"]),
                "peer": abs(peer["gap"]),
                "margin": line["margin"],
                "margin_se": line["margin_se"],
                "met": abs(ours["gap"]) < abs(peer["gap"]),
            }
        )
    return checks


# --------------------------------------------------------------------------------------- reports
def describe(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{row['solver']} [{row['schedule']}], NFE {row['nfe']}: {row['gap']:+.5f} ± {row['gap_se']:.5f}"


def robust(results: dict, budget: int, family: str, top: int = 3) -> list[tuple[float, float, str]]:
    """The ``top`` configurations (solver and grid) of ``family`` with the smallest worst |gap| over
    every problem and SDE at ``budget``: ``(worst, mean, name)``. One configuration has to serve every
    problem, so a lucky sign crossing on one of them does not help it."""
    gaps: dict[str, list[float]] = {}
    for setting in results["settings"].values():
        for r in setting["rows"]:
            if r["family"] == family and r["budget"] == budget:
                gaps.setdefault(f"{r['solver']} [{r['schedule']}]", []).append(abs(r["gap"]) if math.isfinite(r["gap"]) else math.inf)
    full = [(max(v), sum(v) / len(v), k) for k, v in gaps.items() if len(v) == len(results["settings"])]
    return sorted(full)[:top]


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# Fast samplers side by side",
        "",
        f"{meta['note']}: {meta['seconds'] / 60:.1f} minutes on {meta['threads']} thread ({meta['platform']}); "
        f"torch {meta['versions']['torch']}, diffusers {meta['versions']['diffusers']}, k-diffusion {meta['versions']['k-diffusion']}. "
        "Written by `python benchmarks/fast_samplers.py`, whose docstring says how every peer is driven. Every sampler "
        "finishes at t = 0 with a data prediction, from the same prior draws, with the exact score of the mixture. "
        "Gap: the mean exact log p_0 of the samples minus that of exact data samples (the same prior draws carried to "
        "t = 0 by the converged probability-flow ODE), per dimension, in nats, ± its standard error.",
        "",
        "## Targets",
        "",
        "Margin: |gap| of the best of ours minus |gap| of the best peer, ± its standard error (paired per sample).",
        "",
        "| problem / SDE | NFE | target | best of ours | best peer | margin | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results["targets"]:
        peer = f"{c['peer']:.5f}" if "peer" in c else "-"
        margin = f"{c['margin']:+.5f} ± {c['margin_se']:.5f}" if "margin" in c else "-"
        lines.append(
            f"| {c['setting']} | {c['budget']} | {c['target']} | {c['ours']:.5f} | {peer} | {margin} | "
            f"{'met' if c['met'] else '**not met**'} |"
        )
    met = sum(c["met"] for c in results["targets"])
    lines += [
        "",
        f"{met} of {len(results['targets'])} checks met.",
        "",
        "## Headline: the best of ours against the best peer (smallest |gap|, nats/dim)",
        "",
        "The gap is signed, and a solver's gap can change sign between two budgets: its |gap| is then small at one "
        "budget by cancellation of errors, not by accuracy (a best |gap| far below the same solver's values at the "
        "neighbouring budgets, in the tables below, is such a crossing). Sliced W2 has no such cancellation but is "
        "much coarser.",
        "",
        "| problem / SDE | NFE | best of ours | best peer | ideal (Tweedie at eps) |",
        "|---|---|---|---|---|",
    ]
    for key, setting in results["settings"].items():
        for line in setting["headline"]:
            lines.append(
                f"| {key} | {line['budget']} | {describe(line['ours'])} | {describe(line['peer'])} | "
                f"{setting['summary']['ideal']['gap']:+.5f} |"
            )
    lines += [
        "",
        "## One configuration for every problem",
        "",
        "Per family and budget, the configurations (solver and grid) with the smallest worst |gap| over all six "
        "problem / SDE settings (worst, then mean |gap|, nats/dim): what a user who picks one sampler gets.",
        "",
        "| NFE | family | 1st | 2nd | 3rd |",
        "|---|---|---|---|---|",
    ]
    families = sorted({r["family"] for s in results["settings"].values() for r in s["rows"]}, key=lambda f: (f != "ours", f))
    budgets = sorted({r["budget"] for s in results["settings"].values() for r in s["rows"]})
    for budget in budgets:
        for family in families:
            cells = [f"{name}: {worst:.4f} / {mean:.4f}" for worst, mean, name in robust(results, budget, family)]
            lines.append(f"| {budget} | {family} | " + " | ".join(cells + ["-"] * (3 - len(cells))) + " |")
    lines += [
        "",
        "## Floors and references",
        "",
        "Floor: the gap and SW2 between two independent exact sample sets (mean ± sd over 5 pairs). Ideal: exact samples "
        "of p_eps at the smallest noise level, denoised by the exact Tweedie formula (gap ± standard error). Reference: "
        "the exact data samples the gaps are measured against; the change of its gap from half its steps (an upper bound "
        "of its error), and its unpaired gap to an independent data set (± standard error: distributed as the data).",
        "",
        "| problem / SDE | samples | sigma range | floor gap | floor SW2 | ideal gap | ideal SW2 | reference change | reference vs data |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, setting in results["settings"].items():
        s = setting["summary"]
        f, i, r = s["floor"], s["ideal"], s["reference"]
        lines.append(
            f"| {key} | {setting['n']} | {s['sigma_min']:.4g} to {s['sigma_max']:.4g} | {f['gap'][0]:+.5f} ± {f['gap'][1]:.5f} | "
            f"{f['sw2'][0]:.4f} ± {f['sw2'][1]:.4f} | {i['gap']:+.5f} ± {i['gap_se']:.5f} | {i['sw2']:.4f} | "
            f"{r['gap_change_from_half_the_steps']:+.1e} | {r['gap_to_fresh_data'][0]:+.5f} ± {r['gap_to_fresh_data'][1]:.5f} |"
        )
    if results["notes"]:
        lines += ["", "## Skipped and failed", ""] + [f"- {k}: {v}" for k, v in results["notes"].items()]
    for key, setting in results["settings"].items():
        lines += [
            "",
            f"## {key}: every run",
            "",
            "| family | solver | grid / schedule | budget | NFE | gap (nats/dim) | SW2 | seconds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in setting["rows"]:
            gap = f"{r['gap']:+.5f} ± {r['gap_se']:.5f}" if math.isfinite(r["gap"]) else r.get("error", "non-finite samples")
            sw2 = f"{r['sw2']:.4f}" if math.isfinite(r["sw2"]) else "-"
            nfe = "-" if r["nfe"] is None else r["nfe"]
            lines.append(
                f"| {r['family']} | {r['solver']} | {r['schedule']} | {r['budget']} | {nfe} | {gap} | {sw2} | {r['seconds']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """|gap| against NFE, one panel per problem and SDE, one line per solver on its best grid or
    schedule in that panel (smallest summed |gap| over the budgets); solid: ours, dashed: diffusers,
    dotted: k-diffusion; one color per solver in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    settings = results["settings"]
    sde_names = list(dict.fromkeys(s["sde"] for s in settings.values()))
    problem_names = list(dict.fromkeys(s["problem"] for s in settings.values()))
    styles = {
        "ours": ("-", "o", plt.cm.tab20.colors),
        "diffusers": ("--", "s", plt.cm.tab20b.colors[::2]),
        "k-diffusion": (":", "^", plt.cm.Dark2.colors),
    }
    solvers = list(dict.fromkeys((r["family"], r["solver"]) for s in settings.values() for r in s["rows"]))
    colors = {}
    for family, (_, _, palette) in styles.items():
        for k, key in enumerate(key for key in solvers if key[0] == family):
            colors[key] = palette[k % len(palette)]
    fig, axes = plt.subplots(
        len(sde_names), len(problem_names), figsize=(5.2 * len(problem_names) + 4.5, 4.6 * len(sde_names)), squeeze=False
    )
    handles = {}
    for setting in settings.values():
        ax = axes[sde_names.index(setting["sde"]), problem_names.index(setting["problem"])]
        curves: dict = {}
        for r in setting["rows"]:
            if math.isfinite(r["gap"]):
                curves.setdefault((r["family"], r["solver"]), {}).setdefault(r["schedule"], []).append((r["nfe"], max(abs(r["gap"]), 1e-6)))
        for key, by_schedule in curves.items():
            _, points = min(by_schedule.items(), key=lambda kv: sum(g for _, g in kv[1]))
            ls, marker, _ = styles[key[0]]
            (handles[key],) = ax.plot(*zip(*sorted(points), strict=True), ls=ls, marker=marker, ms=3, lw=1.2, color=colors[key])
        summary = setting["summary"]
        handles["ideal"] = ax.axhline(abs(summary["ideal"]["gap"]), color="black", lw=1, ls="-.")
        handles["floor"] = ax.axhline(summary["floor"]["gap"][1], color="gray", lw=1, ls=":")
        handles["targets"] = ax.scatter(list(TARGETS), list(TARGETS.values()), marker="x", s=60, color="red", zorder=5)
        ax.set(
            xscale="log", yscale="log", xlabel="NFE", ylabel="|log-density gap| (nats/dim)", title=f"{setting['problem']}, {setting['sde']}"
        )
        ax.set_xticks(results["meta"]["budgets"])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    labels = {key: f"{key[1]} ({key[0]})" for key in solvers}
    labels.update(ideal="ideal: Tweedie from exact p_eps", floor="sd of the gap of an exact set (unpaired)", targets="targets")
    keys = [k for k in [*solvers, "ideal", "floor", "targets"] if k in handles]
    fig.legend([handles[k] for k in keys], [labels[k] for k in keys], loc="center right", fontsize=7, frameon=False)
    fig.suptitle(
        "Exact scores, each solver on its best grid or schedule per panel; solid: sde-diffusion, dashed: diffusers, dotted: k-diffusion"
    )
    fig.tight_layout(rect=(0, 0, 1 - 3.7 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: budgets 10 and 20, a twentieth of the samples")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for fast_samplers.{json,md,png}")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared; the runs are timed
    start = time.perf_counter()
    budgets = (10, 20) if args.quick else BUDGETS
    sizes = {"2-D ring": 20000, "16-D anisotropic": 10000, "64-D images": 4000}
    if args.quick:
        sizes = {k: v // 20 for k, v in sizes.items()}
    reference_steps = 200 if args.quick else 400
    solvers = ours() + diffusers_peers() + k_diffusion_peers()
    results: dict = {"settings": {}, "notes": {}, "targets": []}
    for sde_name, (sde, eps) in sdes().items():
        for problem, dist in problems().items():
            setting = Setting(problem, dist, sde_name, sde, eps, sizes[problem], reference_steps)
            summary = setting.summary
            print(
                f"{sde_name} {problem}: reference flow in {summary['reference']['seconds']:.1f}s (change from half the steps "
                f"{summary['reference']['gap_change_from_half_the_steps']:+.1e}); ideal gap {summary['ideal']['gap']:+.5f}; "
                f"floor sd {summary['floor']['gap'][1]:.5f}"
            )
            rows, diffs = run_setting(setting, solvers, budgets, results["notes"], print)
            key = f"{problem} / {sde_name}"
            lines = [head_to_head(rows, diffs, budget) for budget in budgets]
            results["settings"][key] = {
                "problem": problem,
                "sde": sde_name,
                "n": setting.n,
                "summary": summary,
                "headline": lines,
                "rows": rows,
            }
            results["targets"] += [check for line in lines for check in target_checks(key, line)]
    results["meta"] = {
        "note": "quick smoke run" if args.quick else "full run",
        "seconds": time.perf_counter() - start,
        "threads": 1,
        "platform": platform.platform(),
        "budgets": list(budgets),
        "versions": {p: version(p) for p in ("torch", "diffusers", "k-diffusion", "sde-diffusion")},
    }
    for note, text in results["notes"].items():
        print(f"note: {note}: {text}")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("fast_samplers_quick" if args.quick else "fast_samplers")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    stem.with_suffix(".md").write_text(text)
    plot(results, stem.with_suffix(".png"))
    print(text.split("\n## Floors")[0])


if __name__ == "__main__":
    main()
