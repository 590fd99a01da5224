"""Every speed lever of the toolkit beside its default, in one run on this CPU.

A. Training steps/s (``Trainer.train_step`` after warm-up steps) of
   - mlp:  the default ``sde-train`` model: TimeMLP 128x4 (Gaussian Fourier time embedding 64, scale
           16), eps parameterization, VP SDE, checkerboard, batch 256 (conf/model/mlp.yaml,
           conf/train/default.yaml);
   - unet: the class-conditional digits U-Net of ``experiment=digits`` (conf/model/unet.yaml): 8x8
           digits, batch 128, lr 5e-4, warm-up 200, label dropout 0.1;
   for fp32 eager (the default), bf16 and fp16 (autocast), torch.compile fp32 and bf16, and for the
   U-Net also bf16 and fp32 on 2 threads. The time of the first step (which for the compiled rows
   is the compilation) is a column of its own and is not part of steps/s.
B. Equal quality: the digits U-Net trained for ``--quality-steps`` steps from the same seed by the
   default (fp32, 1 thread) and by the fast setting of ``--fast-precision``/``--fast-threads``/
   ``--fast-compile`` (default bf16 on 2 threads); the held-out bits/dim of each EMA model by the
   probability-flow ODE (``sd.evaluate_nll``: dopri5 at rtol = atol = 1e-5, Hutchinson divergence,
   one dequantization per point, fp32 and 1 thread for both), with its standard error.
C. Sampling samples/s of the fp32 model from B (class labels i mod 10, one network call per NFE):
   DPM-Solver++(2M) on the log-SNR grid and Euler-Maruyama on the uniform grid (eps 1e-3), for fp32,
   bf16 and compiled fp32 (the network wrapped by ``sde_diffusion.precision.accelerate``), from the
   same prior draws and (Euler-Maruyama) the same noise; the mean |x - x_fp32| of the samples shows
   what the precision costs.
D. Likelihood NFE at equal accuracy: Gaussian mixtures with exact scores (2-D: 8 components on the
   unit circle, std 0.1; 8-D: 4 components, anisotropic covariances with std 0.07 to 0.3), float64,
   exact divergence, ``prior_logp`` the true marginal at T (so only solver error remains), under VP,
   sub-VP, VE and cosine VP, solved in ``time_variable`` t, log_snr and sigma over a sweep of
   rtol = atol. Error: max over the points of |logp - log p_eps(x)| / D. For each SDE and variable,
   the NFE (and seconds) at which the error equals that of the t-solve at rtol = 1e-5, interpolated
   linearly in log NFE against log error between the sweep points, and its ratio to t's. The issue's
   target: >= 30 % fewer NFE at equal accuracy.
E. The digits model from B (fp32): NFE and seconds of ``log_likelihood`` (Hutchinson, one fixed
   Rademacher probe, the same dequantized held-out points) at rtol = atol = 1e-5 in t, log_snr and
   sigma, and the bits/dim difference from a reference solve in t at rtol = atol = 1e-7.

Timings alternate the settings in ``--rounds`` rounds (the order rotated every round) and report
medians; everything runs on 1 torch thread unless a row says otherwise. torch.compile compiles each
network for its fixed shapes (automatic dynamic shapes off: this process compiles the same forward
code for several networks and batch sizes, which one training or sampling run never does).
Writes benchmarks/results/speed.{md,json,png} (with --quick: a temporary folder, or --out).

    python benchmarks/speed.py                              # full: about 35 minutes on 2 cores
    python benchmarks/speed.py --quick --out /tmp/speed     # smoke run: 2-5 minutes, mostly torch.compile
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402

import sde_diffusion as sd  # noqa: E402
from sde_diffusion import samplers as S  # noqa: E402
from sde_diffusion import timesteps  # noqa: E402
from sde_diffusion.precision import accelerate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EPS = 1e-5  # log_likelihood's start time
SAMPLER_EPS = 1e-3  # the sampling grids' last time (conf/sampler)
TIME_VARIABLES = ("t", "log_snr", "sigma")
REFERENCE_TOL = 1e-5  # D: equal accuracy means the t-solve's error at this tolerance
TARGET_SAVING = 0.30  # the issue: >= 30 % fewer NFE at equal accuracy
SEED = 0
BUDGETS = {
    "full": {
        "rounds": 3, "mlp_warmup": 20, "mlp_steps": 100, "unet_warmup": 3, "unet_steps": 10, "step_cap_s": 5.0,
        "quality_steps": 1500, "quality_points": 100, "sample_batch": 500, "dpm_steps": 20, "em_steps": 100,
        "tols": [10 ** (-k / 2) for k in range(6, 15)], "mixture_points": 64, "digits_points": 64, "digits_tol": 1e-5,
        "digits_reference_tol": 1e-7,
    },
    "quick": {
        "rounds": 1, "mlp_warmup": 3, "mlp_steps": 5, "unet_warmup": 2, "unet_steps": 2, "step_cap_s": 2.0,
        "quality_steps": 20, "quality_points": 8, "sample_batch": 16, "dpm_steps": 5, "em_steps": 10,
        "tols": [1e-4, 1e-5], "mixture_points": 8, "digits_points": 8, "digits_tol": 1e-4, "digits_reference_tol": 1e-5,
    },
}  # fmt: skip


@dataclass(frozen=True)
class Lever:
    """How the network runs: precision (autocast), torch.compile, torch threads."""

    precision: str = "fp32"
    compile: bool = False
    threads: int = 1

    @property
    def name(self) -> str:
        threads = f", {self.threads} threads" if self.threads != 1 else ""
        return f"{self.precision} {'compiled' if self.compile else 'eager'}{threads}{' (default)' if self == DEFAULT else ''}"


DEFAULT = Lever()
TRAIN_LEVERS = [DEFAULT, Lever("bf16"), Lever("fp16"), Lever(compile=True), Lever("bf16", compile=True)]
UNET_LEVERS = TRAIN_LEVERS + [Lever("bf16", threads=2), Lever(threads=2)]
SAMPLE_LEVERS = [DEFAULT, Lever("bf16"), Lever(compile=True)]


# ------------------------------------------------------------------------------------ helpers
@contextmanager
def threads(n: int):
    """Run with ``n`` torch threads, then restore the previous count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def timed(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` and its wall time in seconds."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def interleave(keys: list, measure: Callable, n_rounds: int) -> dict:
    """``measure(key)`` for every key in each of ``n_rounds`` rounds, the order rotated every round;
    the results per key, in round order."""
    results: dict = {k: [] for k in keys}
    for r in range(n_rounds):
        k = r % len(keys)
        for key in keys[k:] + keys[:k]:
            results[key].append(measure(key))
    return results


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


# --------------------------------------------------------------------------- models and data
def mlp_trainer(lever: Lever) -> sd.Trainer:
    """The default ``sde-train`` model and options (2-D checkerboard, batch 256)."""
    sde = sd.VPSDE()
    torch.manual_seed(SEED)
    data = sd.toy_dataset("checkerboard", n_train=50_000, n_test=100, seed=0)
    net = sd.TimeMLP((2,), hidden_dim=128, n_layers=4, time_embedding=sd.GaussianFourierEmbedding(64, 16.0))
    opts = sd.TrainOptions(batch_size=256, lr=1e-3, warmup_steps=500, progress=False)
    return sd.Trainer(sd.EpsilonParameterization(net, sde), sde, data.train, opts, seed=SEED,
                      precision=lever.precision, compile=lever.compile)  # fmt: skip


def unet_trainer(lever: Lever, data: sd.Dataset, steps: int = 20_000) -> sd.Trainer:
    """The class-conditional digits U-Net with the options of conf/experiment/digits.yaml."""
    sde = sd.VPSDE()
    torch.manual_seed(SEED)
    net = sd.UNet((1, 8, 8), channels=32, channel_mult=(1, 2, 2), n_res_blocks=1, attention_resolutions=(4,), dropout=0.1,
                  n_classes=10, time_embedding=sd.GaussianFourierEmbedding(64, 16.0))  # fmt: skip
    opts = sd.TrainOptions(steps=steps, batch_size=128, lr=5e-4, warmup_steps=200, ema_decay=0.999, label_dropout=0.1, progress=False)
    return sd.Trainer(sd.EpsilonParameterization(net, sde), sde, data.train, opts, seed=SEED, labels=data.train_labels,
                      precision=lever.precision, compile=lever.compile)  # fmt: skip


def ring_mixture() -> sd.GaussianMixture:
    """2-D: 8 components of std 0.1 on the unit circle, weights 1 to 2."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = torch.stack([angles.cos(), angles.sin()], dim=1)
    covs = 0.01 * torch.eye(2, dtype=torch.float64).expand(8, 2, 2)
    return sd.GaussianMixture(torch.linspace(1.0, 2.0, 8, dtype=torch.float64), means, covs)


def anisotropic_mixture() -> sd.GaussianMixture:
    """8-D: 4 components, random means (std 1), random rotations of standard deviations 0.07 to 0.3."""
    g = torch.Generator().manual_seed(8)
    means = torch.randn(4, 8, generator=g, dtype=torch.float64)
    rotations = torch.linalg.qr(torch.randn(4, 8, 8, generator=g, dtype=torch.float64)).Q
    variances = torch.logspace(math.log10(0.07**2), math.log10(0.3**2), 8, dtype=torch.float64)
    covs = rotations @ torch.diag(variances) @ rotations.transpose(1, 2)
    return sd.GaussianMixture(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), means, covs)


MIXTURES = {"2-D ring (8 comp.)": ring_mixture, "8-D anisotropic (4 comp.)": anisotropic_mixture}
SDES = {"VP": sd.VPSDE, "sub-VP": sd.SubVPSDE, "VE": sd.VESDE, "cosine VP": sd.CosineVPSDE}


# ------------------------------------------------------------------------------ A. training
def prepared_trainer(build: Callable, lever: Lever, warmup: int) -> tuple[sd.Trainer, float]:
    """A trainer after ``warmup`` steps, and the seconds of its first step (the compilation, if any)."""
    with threads(lever.threads):
        trainer = build(lever)
        _, first = timed(trainer.train_step)
        for _ in range(warmup - 1):
            trainer.train_step()
    return trainer, first


def steps_per_sec(trainer: sd.Trainer, lever: Lever, steps: int, cap: float) -> float:
    """Steps/s over up to ``steps`` steps, stopping after the first step that ends past ``cap`` seconds (slow rows)."""
    with threads(lever.threads):
        done, start = 0, time.perf_counter()
        while done < steps and (done == 0 or time.perf_counter() - start < cap):
            trainer.train_step()
            done += 1
        return done / (time.perf_counter() - start)


def training_rows(model: str, build: Callable, levers: list[Lever], budget: dict) -> list[dict]:
    """Steps/s of each lever on ``model`` (mlp or unet), the budget's warm-up, steps, cap and rounds."""
    prepared = {}
    for lever in levers:
        prepared[lever] = prepared_trainer(build, lever, budget[f"{model}_warmup"])
        log(f"A {model}: {lever.name} ready, first step {prepared[lever][1]:.1f} s")
    steps, cap = budget[f"{model}_steps"], budget["step_cap_s"]
    rates = interleave(levers, lambda lever: steps_per_sec(prepared[lever][0], lever, steps, cap), budget["rounds"])
    base = statistics.median(rates[DEFAULT])
    return [{"model": model, "setting": lever.name, **asdict(lever), "first_step_s": prepared[lever][1], "steps_per_sec": rates[lever],
             "median": statistics.median(rates[lever]), "ratio": statistics.median(rates[lever]) / base} for lever in levers]  # fmt: skip


def section_a(budget: dict, digits: sd.Dataset) -> list[dict]:
    rows = training_rows("mlp", mlp_trainer, TRAIN_LEVERS, budget)
    rows += training_rows("unet", lambda lever: unet_trainer(lever, digits), UNET_LEVERS, budget)
    return rows


# --------------------------------------------------------------------------- B. equal quality
def train_for_quality(lever: Lever, data: sd.Dataset, steps: int) -> tuple[sd.Trainer, dict]:
    """A fresh U-Net trained ``steps`` steps under ``lever``; its rate and wall time (compilation included)."""
    with threads(lever.threads):
        start = time.perf_counter()
        trainer = unet_trainer(lever, data, steps)
        result = trainer.fit()
        wall = time.perf_counter() - start
    return trainer, {"steps": steps, "steps_per_sec": result.steps_per_sec, "wall_s": wall, "last_loss": result.last_loss}


def held_out_bpd(model: torch.nn.Module, sde: sd.SDE, data: sd.Dataset, n_points: int) -> dict:
    """Bits/dim of the fp32 model by the ODE on the first ``n_points`` held-out digits (1 thread)."""
    r = sd.evaluate_nll(sde, model, data.test, levels=data.levels, interval_width=data.interval_width, n_points=n_points, seed=SEED)
    return {"bpd": r["bpd"], "bpd_stderr": r["bpd_stderr"], "nll_nfe": r["nfe"], "nll_seconds": r["seconds"], "divergence": r["divergence"]}


def section_b(budget: dict, digits: sd.Dataset, fast: Lever) -> tuple[list[dict], dict, torch.nn.Module]:
    rows, models = [], {}
    for lever in (DEFAULT, fast):
        trainer, train = train_for_quality(lever, digits, budget["quality_steps"])
        models[lever] = trainer.ema_model.eval()
        rows.append(
            {"setting": lever.name, **asdict(lever), **train, **held_out_bpd(models[lever], trainer.sde, digits, budget["quality_points"])}
        )
        log(f"B: {lever.name}: {train['steps_per_sec']:.2f} steps/s, {rows[-1]['bpd']:.4f} +- {rows[-1]['bpd_stderr']:.4f} bits/dim")
    return rows, quality_verdict(*rows), models[DEFAULT]


def quality_verdict(default: dict, fast: dict) -> dict:
    difference = fast["bpd"] - default["bpd"]
    combined = math.hypot(default["bpd_stderr"], fast["bpd_stderr"])
    return {"difference": difference, "combined_stderr": combined, "within_2_stderr": abs(difference) <= 2 * combined,
            "speedup": fast["steps_per_sec"] / default["steps_per_sec"], "wall_ratio": fast["wall_s"] / default["wall_s"]}  # fmt: skip


# -------------------------------------------------------------------------------- C. sampling
def run_sampler(name: str, sde: sd.SDE, score: Callable, prior: torch.Tensor, steps: int) -> torch.Tensor:
    if name == "dpm_solver_pp":
        ts = timesteps.log_snr_time_grid(sde, steps, SAMPLER_EPS)
        return S.dpm_solver_pp(sde, score, prior, ts, order=2).samples
    ts = timesteps.uniform_time_grid(sde, steps, SAMPLER_EPS)
    return S.euler_maruyama(sde, score, prior, ts, generator=torch.Generator().manual_seed(SEED + 1)).samples


def sampling_rows(model: torch.nn.Module, sde: sd.SDE, budget: dict, n_rounds: int) -> list[dict]:
    batch = budget["sample_batch"]
    labels = torch.arange(batch) % 10
    prior = sde.prior_std * torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(SEED))
    nets = {lever: accelerate(model, precision=lever.precision, compile=lever.compile) for lever in SAMPLE_LEVERS}
    rows = []
    for sampler, steps in (("dpm_solver_pp", budget["dpm_steps"]), ("euler_maruyama", budget["em_steps"])):

        def draw(lever: Lever) -> tuple[torch.Tensor, float]:
            return timed(run_sampler, sampler, sde, lambda x, t: nets[lever](x, t, labels), prior, steps)  # noqa: B023

        first = {lever: draw(lever) for lever in SAMPLE_LEVERS}  # warm-up; the compiled row compiles here
        log(f"C {sampler}: warm, first calls " + ", ".join(f"{lv.name} {s:.1f} s" for lv, (_, s) in first.items()))
        seconds = interleave(SAMPLE_LEVERS, lambda lever: draw(lever)[1], n_rounds)  # noqa: B023
        base = statistics.median(seconds[DEFAULT])
        reference = first[DEFAULT][0]
        rows += [{"sampler": sampler, "steps": steps, "batch": batch, "setting": lever.name, **asdict(lever), "first_call_s": first[lever][1],
                  "seconds": seconds[lever], "samples_per_sec": batch / statistics.median(seconds[lever]),
                  "ratio": base / statistics.median(seconds[lever]),
                  "mean_abs_diff": (first[lever][0] - reference).abs().mean().item()} for lever in SAMPLE_LEVERS]  # fmt: skip
    return rows


# ---------------------------------------------------------------- D. likelihood at equal accuracy
def mixture_solve(dist: sd.GaussianMixture, sde: sd.SDE, x: torch.Tensor, variable: str, tol: float):
    return timed(sd.log_likelihood, sde, dist.score_fn(sde), x, eps=EPS, rtol=tol, atol=tol, time_variable=variable,
                 prior_logp=lambda z: dist.log_prob(z, sde.T, sde))  # fmt: skip


def sweep_rows(mixture: str, dist: sd.GaussianMixture, sde_name: str, budget: dict) -> list[dict]:
    """Every (variable, tolerance) on one mixture and SDE: NFE, error, seconds (variables interleaved)."""
    sde = SDES[sde_name]()
    x = dist.sample(budget["mixture_points"], generator=torch.Generator().manual_seed(SEED + 1), dtype=torch.float64)
    truth = dist.log_prob(x, EPS, sde)
    for variable in TIME_VARIABLES:  # warm-up (vmap, autograd)
        mixture_solve(dist, sde, x[:2], variable, 1e-3)
    rows = []
    for tol in budget["tols"]:
        solves = interleave(list(TIME_VARIABLES), lambda v: mixture_solve(dist, sde, x, v, tol), budget["rounds"])  # noqa: B023
        for variable, runs in solves.items():
            out = runs[0][0]
            rows.append({"mixture": mixture, "sde": sde_name, "variable": variable, "tol": tol, "nfe": out.nfe,
                         "error": ((out.logp - truth).abs().max() / dist.dim).item(), "seconds": [s for _, s in runs],
                         "seconds_median": statistics.median(s for _, s in runs)})  # fmt: skip
    log(f"D {mixture}, {sde_name}: " + ", ".join(f"{r['variable']}@{r['tol']:.0e} {r['nfe']} NFE {r['error']:.1e}" for r in rows))
    return rows


def at_error(points: list[tuple[float, float]], target: float) -> tuple[float | None, str]:
    """The value at error ``target`` from ``(error, value)`` points ordered from the loosest tolerance:
    interpolated linearly in log value against log error between the last point above the target and
    the first at or below it; ``("<=", first value)`` if the loosest already reaches it, ``(None, ">")`` if none does."""
    for i, (error, value) in enumerate(points):
        if error <= target:
            if i == 0:
                return value, "<="
            e0, v0 = points[i - 1]
            w = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(max(error, 1e-300)))
            return math.exp(math.log(v0) + w * (math.log(value) - math.log(v0))), "="
    return None, ">"


def equal_accuracy_rows(sweep: list[dict]) -> list[dict]:
    """Per mixture, SDE and variable: NFE and seconds at the t-solve's error at REFERENCE_TOL, and the ratios to t."""
    rows = []
    for mixture in MIXTURES:
        for sde_name in SDES:
            runs = [r for r in sweep if r["mixture"] == mixture and r["sde"] == sde_name]
            target = next(r["error"] for r in runs if r["variable"] == "t" and math.isclose(r["tol"], REFERENCE_TOL))
            found = {}
            for variable in TIME_VARIABLES:
                mine = sorted((r for r in runs if r["variable"] == variable), key=lambda r: -r["tol"])
                nfe, bound = at_error([(r["error"], r["nfe"]) for r in mine], target)
                seconds, _ = at_error([(r["error"], r["seconds_median"]) for r in mine], target)
                found[variable] = {"mixture": mixture, "sde": sde_name, "variable": variable, "target_error": target, "nfe": nfe, "bound": bound,
                                   "seconds": seconds}  # fmt: skip
            for row in found.values():
                t = found["t"]
                row["nfe_ratio"] = row["nfe"] / t["nfe"] if row["nfe"] and t["nfe"] else None
                row["seconds_ratio"] = row["seconds"] / t["seconds"] if row["seconds"] and t["seconds"] else None
                rows.append(row)
    return rows


def likelihood_verdict(rows: list[dict]) -> list[str]:
    """Per SDE: the NFE ratio to t of log_snr and sigma on each mixture, and whether either meets the target on both."""
    lines = []
    for sde_name in SDES:
        ratios = {v: [r["nfe_ratio"] for r in rows if r["sde"] == sde_name and r["variable"] == v] for v in TIME_VARIABLES[1:]}
        met = [v for v, rs in ratios.items() if None not in rs and max(rs) <= 1 - TARGET_SAVING]
        cells = "; ".join(f"{v} {' / '.join(fmt(x, '.2f') for x in rs)}" for v, rs in ratios.items())
        verdict = f"met by {', '.join(met)}" if met else "not met"
        lines.append(f"- {sde_name}: NFE ratio to t ({' / '.join(MIXTURES)}): {cells}; target <= {1 - TARGET_SAVING:.2f}: **{verdict}**")
    return lines


def section_d(budget: dict) -> tuple[list[dict], list[dict]]:
    sweep = [row for mixture, build in MIXTURES.items() for sde_name in SDES for row in sweep_rows(mixture, build(), sde_name, budget)]
    return sweep, equal_accuracy_rows(sweep)


def plot_sweep(sweep: list[dict], equal: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(len(MIXTURES), len(SDES), figsize=(4 * len(SDES), 3.4 * len(MIXTURES)), squeeze=False)
    for i, mixture in enumerate(MIXTURES):
        for j, sde_name in enumerate(SDES):
            ax = axes[i][j]
            for variable in TIME_VARIABLES:
                runs = sorted(
                    (r for r in sweep if (r["mixture"], r["sde"], r["variable"]) == (mixture, sde_name, variable)), key=lambda r: r["nfe"]
                )
                ax.loglog([r["nfe"] for r in runs], [r["error"] for r in runs], "o-", label=variable)
            target = next(r["target_error"] for r in equal if (r["mixture"], r["sde"]) == (mixture, sde_name))
            ax.axhline(target, color="grey", lw=0.8, ls="--", label=f"t @ rtol {REFERENCE_TOL:.0e}")
            ax.set_title(f"{sde_name}, {mixture}", fontsize=9)
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%d"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("NFE")
            ax.set_ylabel("max |logp error| / D (nats)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------ E. digits likelihood
def digits_points(data: sd.Dataset, n: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """The first ``n`` held-out digits, dequantized once with a fixed seed, and the interval of the levels."""
    low = float(min(data.train.min(), data.test.min()))
    interval = (low, low + data.interval_width)
    return sd.dequantize(data.test[:n], data.levels, interval, generator=torch.Generator().manual_seed(SEED)), interval


def digits_solve(model: torch.nn.Module, sde: sd.SDE, x: torch.Tensor, variable: str, tol: float):
    return timed(sd.log_likelihood, sde, model, x, eps=EPS, rtol=tol, atol=tol, divergence="hutchinson", n_probes=1,
                 generator=torch.Generator().manual_seed(SEED), time_variable=variable)  # fmt: skip


def section_e(model: torch.nn.Module, sde: sd.SDE, data: sd.Dataset, budget: dict) -> tuple[list[dict], dict]:
    x, interval = digits_points(data, budget["digits_points"])
    dim = x[0].numel()

    def bpd(out):
        return sd.bits_per_dim(out.logp, dim, data.levels, interval)

    reference, ref_seconds = digits_solve(model, sde, x, "t", budget["digits_reference_tol"])
    ref_bpd = bpd(reference)
    log(f"E: reference in t at {budget['digits_reference_tol']:.0e}: {reference.nfe} NFE, {ref_seconds:.1f} s")
    solves = interleave(list(TIME_VARIABLES), lambda v: digits_solve(model, sde, x, v, budget["digits_tol"]), budget["rounds"])
    rows = []
    for variable, runs in solves.items():
        out, seconds = runs[0][0], [s for _, s in runs]
        rows.append({"variable": variable, "tol": budget["digits_tol"], "nfe": out.nfe, "seconds": seconds,
                     "seconds_median": statistics.median(seconds), "bpd": bpd(out).mean().item(),
                     "bpd_diff": (bpd(out) - ref_bpd).mean().item(), "max_abs_bpd_diff": (bpd(out) - ref_bpd).abs().max().item()})  # fmt: skip
    for row in rows:
        row["nfe_ratio"] = row["nfe"] / rows[0]["nfe"]
        row["seconds_ratio"] = row["seconds_median"] / rows[0]["seconds_median"]
    ref = {"tol": budget["digits_reference_tol"], "nfe": reference.nfe, "seconds": ref_seconds, "bpd": ref_bpd.mean().item()}
    return rows, ref


# ---------------------------------------------------------------------------------- report
def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report_a(rows: list[dict]) -> str:
    return md_table(
        ["model", "setting", "threads", "first step s (compile)", "steps/s median [min-max]", "ratio to fp32 eager, 1 thread"],
        [[r["model"], r["setting"], r["threads"], f"{r['first_step_s']:.1f}",
          f"{r['median']:.2f} [{min(r['steps_per_sec']):.2f}-{max(r['steps_per_sec']):.2f}]", f"{r['ratio']:.2f}"] for r in rows],
    )  # fmt: skip


def report_b(rows: list[dict], verdict: dict) -> str:
    table = md_table(
        ["setting", "threads", "steps", "steps/s", "wall s", "held-out bits/dim ± s.e.", "ODE NFE", "NLL s"],
        [[r["setting"], r["threads"], r["steps"], f"{r['steps_per_sec']:.2f}", f"{r['wall_s']:.0f}",
          f"{r['bpd']:.4f} ± {r['bpd_stderr']:.4f}", f"{r['nll_nfe']:.0f}", f"{r['nll_seconds']:.0f}"] for r in rows],
    )  # fmt: skip
    within = "within" if verdict["within_2_stderr"] else "NOT within"
    return (f"{table}\n\nFast minus default: {verdict['difference']:+.4f} bits/dim, {within} 2 combined standard errors "
            f"(2 x {verdict['combined_stderr']:.4f}); training {verdict['speedup']:.2f}x the steps/s, "
            f"{verdict['wall_ratio']:.2f}x the wall time.")  # fmt: skip


def report_c(rows: list[dict]) -> str:
    return md_table(
        ["sampler", "steps", "batch", "setting", "first call s", "samples/s median", "ratio to fp32", "mean abs diff to fp32"],
        [[r["sampler"], r["steps"], r["batch"], r["setting"], f"{r['first_call_s']:.1f}", f"{r['samples_per_sec']:.1f}", f"{r['ratio']:.2f}",
          f"{r['mean_abs_diff']:.2e}"] for r in rows],
    )  # fmt: skip


def report_d(sweep: list[dict], equal: list[dict]) -> str:
    equal_table = md_table(
        ["mixture", "SDE", "variable", "target error (t @ 1e-5)", "NFE at target", "NFE ratio to t", "seconds at target", "seconds ratio to t"],
        [[r["mixture"], r["sde"], r["variable"], f"{r['target_error']:.2e}",
          "-" if r["nfe"] is None else f"{'<= ' if r['bound'] == '<=' else ''}{r['nfe']:.0f}",
          fmt(r["nfe_ratio"], ".2f"), fmt(r["seconds"], ".2f"), fmt(r["seconds_ratio"], ".2f")] for r in equal],
    )  # fmt: skip
    tols = sorted({r["tol"] for r in sweep}, reverse=True)
    cells = {(r["mixture"], r["sde"], r["variable"], r["tol"]): f"{r['nfe']} / {r['error']:.1e} / {r['seconds_median']:.2f}" for r in sweep}
    sweep_table = md_table(
        ["mixture", "SDE", "variable", *(f"rtol {tol:.0e}" for tol in tols)],
        [[m, s, v, *(cells[(m, s, v, tol)] for tol in tols)] for m in MIXTURES for s in SDES for v in TIME_VARIABLES],
    )
    return f"{equal_table}\n\nFull sweep, each cell NFE / max error per dim (nats) / seconds:\n\n{sweep_table}"


def report_e(rows: list[dict], ref: dict) -> str:
    table = md_table(
        ["variable", "rtol=atol", "NFE", "NFE ratio to t", "seconds median", "seconds ratio to t", "bits/dim", "bpd - reference (mean)", "max abs per point"],
        [[r["variable"], f"{r['tol']:.0e}", r["nfe"], f"{r['nfe_ratio']:.2f}", f"{r['seconds_median']:.2f}", f"{r['seconds_ratio']:.2f}",
          f"{r['bpd']:.4f}", f"{r['bpd_diff']:+.1e}", f"{r['max_abs_bpd_diff']:.1e}"] for r in rows],
    )  # fmt: skip
    return (
        f"{table}\n\nReference: t at rtol = atol = {ref['tol']:.0e}: {ref['nfe']} NFE, {ref['seconds']:.1f} s, {ref['bpd']:.4f} bits/dim."
    )


def environment() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip


def markdown(result: dict) -> str:
    env, budget, fast = result["environment"], result["budget"], result["fast_setting"]
    return "\n".join([
        "# Speed levers against the defaults",
        "",
        f"torch {env['torch']}, {env['cpu_count']} CPUs ({env['machine']}), OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; "
        f"{budget['rounds']} interleaved rounds per timing, medians; 1 torch thread unless a row says otherwise; "
        f"{'QUICK smoke run; ' if result['quick'] else ''}{result['wall_seconds'] / 60:.1f} minutes in all.",
        "",
        f"## A. Training steps/s (mlp: {budget['mlp_steps']} steps per round, unet: {budget['unet_steps']}, after warm-up)",
        "",
        report_a(result["training"]),
        "",
        "first step s: the first train_step of a fresh trainer (for the compiled rows: the compilation), not part of steps/s. "
        f"A round times up to the stated steps, fewer for a row slower than {budget['step_cap_s']:g} s (at least one step). "
        "fp16 trains with the Trainer's gradient scaler.",
        "",
        f"## B. Equal quality: digits U-Net, {budget['quality_steps']} steps, default against {fast}",
        "",
        report_b(result["quality"], result["quality_verdict"]),
        "",
        f"Held-out bits/dim of the EMA model on the first {budget['quality_points']} held-out digits by the probability-flow ODE "
        "(sd.evaluate_nll, dopri5, rtol = atol = 1e-5, Hutchinson, one dequantization per point, seed 0). "
        "**The likelihood always runs in fp32 on 1 thread**, whatever the model was trained with. "
        "Wall time includes any compilation.",
        "",
        "## C. Sampling with the fp32 model from B",
        "",
        report_c(result["sampling"]),
        "",
        "Same prior draws and (Euler-Maruyama) the same noise for every setting; mean abs diff: mean |x - x_fp32| over "
        "all sample entries (data on [-1, 1)). Class labels i mod 10, no guidance (one network call per NFE). first call s: the "
        "first sampling run, not timed in the rounds (the compiled network compiles once for the batch, in the first sampler).",
        "",
        "## D. Likelihood NFE at equal accuracy (Gaussian mixtures, exact scores, float64, exact divergence)",
        "",
        *likelihood_verdict(result["likelihood_equal"]),
        "",
        report_d(result["likelihood_sweep"], result["likelihood_equal"]),
        "",
        f"{budget['mixture_points']} points per mixture; error: max over them of |logp - log p_eps(x)| / D with the true "
        f"marginal at T as the prior; target error: the t-solve's at rtol = atol = {REFERENCE_TOL:.0e}; NFE and seconds at it "
        "interpolated linearly in log-log between sweep points ('<=': the loosest tolerance already reaches it; '-': no tolerance "
        "of the sweep reaches it). Seconds include each variable's own cost per evaluation: log_snr and sigma find t(u) by "
        "the SDE's time_from_log_snr (closed forms for VP, sub-VP and VE; a 60-step bisection for cosine VP, hence its seconds). Plot: speed.png.",
        "",
        f"## E. Digits model from B: log_likelihood by time variable ({budget['digits_points']} dequantized held-out digits, "
        "Hutchinson with one fixed probe, fp32)",
        "",
        report_e(result["digits_likelihood"], result["digits_reference"]),
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (few steps, tiny sweeps, 8 points): 2-5 minutes, mostly compilation"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for speed.{md,json,png} (default benchmarks/results; with --quick a temporary folder)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 3; 1 with --quick)")
    parser.add_argument("--quality-steps", type=int, default=None, help="training steps of part B (default 1500; 20 with --quick)")
    parser.add_argument(
        "--quality-points", type=int, default=None, help="held-out digits for part B's bits/dim (default 100; 8 with --quick)"
    )
    parser.add_argument("--fast-precision", default="bf16", choices=("fp32", "bf16", "fp16"), help="part B's fast setting: precision")
    parser.add_argument("--fast-threads", type=int, default=2, help="part B's fast setting: torch threads")
    parser.add_argument("--fast-compile", action="store_true", help="part B's fast setting: torch.compile")
    args = parser.parse_args()
    budget = dict(BUDGETS["quick" if args.quick else "full"])
    budget.update({k: v for k, v in (("rounds", args.rounds), ("quality_steps", args.quality_steps),
                                     ("quality_points", args.quality_points)) if v is not None})  # fmt: skip
    fast = Lever(args.fast_precision, args.fast_compile, args.fast_threads)
    out = args.out or (Path(tempfile.gettempdir()) / "speed_quick" if args.quick else RESULTS)
    torch.set_num_threads(1)
    torch._dynamo.config.automatic_dynamic_shapes = False  # each compiled network for its own fixed shapes (docstring)
    digits = sd.digits_dataset(n_test=297, seed=0)
    sde = sd.VPSDE()
    start, walls = time.perf_counter(), {}

    def section(name: str, fn: Callable, *fn_args):
        value, walls[name] = timed(fn, *fn_args)
        log(f"section {name} done in {walls[name]:.0f} s")
        return value

    training = section("A", section_a, budget, digits)
    quality, verdict, model = section("B", section_b, budget, digits, fast)
    sampling = section("C", sampling_rows, model, sde, budget, budget["rounds"])
    sweep, equal = section("D", section_d, budget)
    digits_rows, digits_ref = section("E", section_e, model, sde, digits, budget)
    result = {
        "quick": args.quick, "environment": environment(), "budget": budget, "fast_setting": fast.name,
        "wall_seconds": time.perf_counter() - start, "section_seconds": walls, "training": training, "quality": quality,
        "quality_verdict": verdict, "sampling": sampling, "likelihood_sweep": sweep, "likelihood_equal": equal,
        "digits_likelihood": digits_rows, "digits_reference": digits_ref,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    print(text)
    (out / "speed.md").write_text(text)
    (out / "speed.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_sweep(sweep, equal, out / "speed.png")
    log(f"wrote {out / 'speed.md'}, speed.json and speed.png")


if __name__ == "__main__":
    main()
