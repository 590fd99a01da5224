"""Diffusion paths at equal training steps: VP, sub-VP, VE and rectified flow on 2-D toy sets.

Every path trains the same network (``sde-train``'s default TimeMLP 128x4 with a Gaussian Fourier
time embedding), from the same seed, for the same number of steps and batch, with the library's own
recipe for it:

  - VP, sub-VP, VE: ``EpsilonParameterization`` and the eps loss (``denoising_score_matching``,
    ``NoiseWeighting``);
  - rectified flow: ``VelocityParameterization`` and ``FlowMatchingWeighting`` (the conditional
    flow-matching loss).

The EMA model of each run is then judged on held-out data by
  - NLL in nats/dim through the probability-flow ODE with the exact divergence
    (``sd.evaluate_nll``, dopri5, rtol = atol = 1e-5, eps = 1e-5), beside the exact data NLL of the
    same points from the toy's closed-form density;
  - sliced W2 (``sd.sliced_wasserstein``, 256 fixed directions) between samples and the held-out
    split (equal sizes) at budgets of 10, 20 and 50 score evaluations, for DPM-Solver++(2M) and
    DDIM (eta = 0) on the log-SNR grid and Heun on the EDM grid (``N`` steps cost ``2N - 1``, so it
    gets the largest ``N`` within the budget); the table names each path's best sampler per budget.
    1000-step Euler-Maruyama on the reverse SDE is the reference column. All samplers stop at
    ``eps = 1e-3`` and start from the same seeded prior draws.

The statistical floor of sliced W2 is the same distance between the held-out split and a fresh
exact draw of the same size from ``data.distribution`` (mean and spread over 5 draws): a number at
the floor is as close as this sample size can tell.

Everything runs on one thread (``torch.set_num_threads(1)``; the machine is shared).

    python benchmarks/paths.py            # full run: 2 data sets x 4 paths x 5000 steps, ~10 minutes
    python benchmarks/paths.py --quick    # smoke run (~1 minute), writes to the temp directory
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import sde_diffusion as sd

RESULTS = Path(__file__).resolve().parent / "results"
EPS = 1e-3
"""Where every sampler stops (forward time)."""
BUDGETS = (10, 20, 50)
DATASETS = ("checkerboard", "eight_gaussians")
SW2_SEED = 0
"""Seed of the sliced-W2 projection directions: the same 256 directions for every comparison."""
PRIOR_SEED = 2
EM_SEED = 3


# ---------------------------------------------------------------------------------------- paths
@dataclass(frozen=True)
class Path_:
    """A diffusion path and its training recipe: the SDE, the parameterization wrapping the raw net
    and the per-sample loss."""

    name: str
    make_sde: Callable[[], sd.SDE]
    parameterization: type
    loss_fn: Callable
    loss_name: str


PATHS = (
    Path_("VP", sd.VPSDE, sd.EpsilonParameterization, sd.denoising_score_matching, "eps (NoiseWeighting)"),
    Path_("sub-VP", sd.SubVPSDE, sd.EpsilonParameterization, sd.denoising_score_matching, "eps (NoiseWeighting)"),
    Path_("VE", sd.VESDE, sd.EpsilonParameterization, sd.denoising_score_matching, "eps (NoiseWeighting)"),
    Path_("rectified flow", sd.RectifiedFlow, sd.VelocityParameterization,
          functools.partial(sd.denoising_score_matching, weighting=sd.FlowMatchingWeighting()),
          "flow matching (FlowMatchingWeighting)"),
)


def network(seed: int) -> torch.nn.Module:
    """``sde-train``'s default network, initialised from ``seed``."""
    torch.manual_seed(seed)
    return sd.TimeMLP((2,), hidden_dim=128, n_layers=4, time_embedding=sd.GaussianFourierEmbedding(64, 16.0))


# ------------------------------------------------------------------------------------- samplers
@dataclass(frozen=True)
class Sampler:
    """A deterministic fast sampler on its grid; ``stages`` score evaluations per step but the first
    (Heun: ``N`` steps cost ``2N - 1``), so a budget buys the most steps that fit in it."""

    name: str
    fn: Callable
    grid: Callable
    options: tuple = ()
    heun_like: bool = False

    def steps(self, budget: int) -> int:
        return (budget + 1) // 2 if self.heun_like else budget

    def __call__(self, sde, score, x, budget):
        ts = self.grid(sde, self.steps(budget), EPS)
        return self.fn(sde, score, x, ts, **dict(self.options))


SAMPLERS = (
    Sampler("dpm_solver++ 2M", sd.dpm_solver_pp, sd.log_snr_time_grid, (("order", 2),)),
    Sampler("heun (edm grid)", sd.heun, sd.edm_time_grid, heun_like=True),
    Sampler("ddim eta=0", sd.ddim, sd.log_snr_time_grid),
)


# -------------------------------------------------------------------------------------- metrics
def sw2(samples: torch.Tensor, held_out: torch.Tensor) -> float:
    """Sliced W2 with the fixed projection directions; NaN when a sample is not finite."""
    if not torch.isfinite(samples).all():
        return float("nan")
    return sd.sliced_wasserstein(samples, held_out, generator=torch.Generator().manual_seed(SW2_SEED))


def floor(data: sd.Dataset, n: int, pairs: int = 5) -> dict:
    """Sliced W2 between the held-out split and ``pairs`` fresh exact draws of the same size."""
    held_out = data.test[:n]
    values = torch.tensor([sw2(data.distribution.sample(n, generator=torch.Generator().manual_seed(100 + k)), held_out)
                           for k in range(pairs)])
    return {"mean": values.mean().item(), "sd": values.std().item(), "pairs": pairs, "n": n,
            "method": f"test[:{n}] vs fresh draws of {n} from data.distribution (seeds 100..{99 + pairs})"}


# ------------------------------------------------------------------------------------------ run
def run_path(path: Path_, data: sd.Dataset, args, log) -> tuple[dict, torch.Tensor]:
    """Train one path, then measure NLL and sliced W2; returns the record and the best 20-NFE samples."""
    sde = path.make_sde()
    model = path.parameterization(network(args.seed), sde)
    options = sd.TrainOptions(steps=args.steps, batch_size=256, lr=1e-3, warmup_steps=min(500, args.steps // 2),
                              progress=False)
    trainer = sd.Trainer(model, sde, data.train, options, loss_fn=path.loss_fn, seed=args.seed)
    fit = trainer.fit()
    log(f"{data.name:>15} {path.name:<15} trained {fit.steps} steps in {fit.seconds:.1f}s, last loss {fit.last_loss:.4f}")
    metrics, samples_20 = evaluate(sde, trainer.ema_model.eval(), data, args, log)
    record = {"dataset": data.name, "path": path.name, "sde": repr(sde), "parameterization": path.parameterization.__name__,
              "loss": path.loss_name, "train_seconds": fit.seconds, "last_loss": fit.last_loss, **metrics}
    return record, samples_20


def evaluate(sde: sd.SDE, score, data: sd.Dataset, args, log) -> tuple[dict, torch.Tensor]:
    """The held-out NLL (exact divergence; bits/dim too on discrete data) of ``score`` and the sliced
    W2 of its samples at each budget and by 1000-step Euler-Maruyama; returns ``{"nll", "sw2", "best",
    "em_1000"}`` and the best 20-NFE samples. ``args``: ``seed``, ``nll_points``, ``samples`` and
    optionally ``divergence`` (default ``exact``; ``auto`` is Hutchinson's above 16 dimensions)."""
    nll = sd.evaluate_nll(sde, score, data.test, n_points=args.nll_points, divergence=getattr(args, "divergence", "exact"), seed=args.seed,
                          density=data.distribution, levels=data.levels, interval_width=data.interval_width)
    exact = "" if nll["data_nll_nats_per_dim"] is None else f" (exact data {nll['data_nll_nats_per_dim']:.4f})"
    bpd = "" if nll["bpd"] is None else f", {nll['bpd']:.3f} bits/dim"
    log(f"{'':>15} {'':<15} NLL {nll['nll_nats_per_dim']:.4f} +- {nll['nll_stderr']:.4f} nats/dim{bpd}{exact}, "
        f"NFE {nll['nfe']:.0f}, {nll['seconds']:.1f}s")

    n = args.samples
    held_out = data.test[:n]
    x_T = sde.prior_sample((n, *data.data_shape), generator=torch.Generator().manual_seed(PRIOR_SEED))
    sw = {}
    samples_20 = {}
    start = time.perf_counter()
    with torch.no_grad():
        for sampler in SAMPLERS:
            sw[sampler.name] = {}
            for budget in BUDGETS:
                out = sampler(sde, score, x_T, budget)
                sw[sampler.name][str(budget)] = {"nfe": out.nfe, "sw2": sw2(out.samples, held_out)}
                if budget == 20:
                    samples_20[sampler.name] = out.samples
        em = sd.euler_maruyama(sde, score, x_T, sd.uniform_time_grid(sde, 1000, EPS),
                               generator=torch.Generator().manual_seed(EM_SEED))
    em_1000 = {"nfe": em.nfe, "sw2": sw2(em.samples, held_out)}
    best = {}
    for budget in map(str, BUDGETS):
        finite = [(v[budget]["sw2"], k) for k, v in sw.items() if math.isfinite(v[budget]["sw2"])]
        value, name = min(finite) if finite else (float("nan"), None)
        best[budget] = {"sampler": name, "nfe": sw[name][budget]["nfe"] if name else None, "sw2": value}
    log(f"{'':>15} {'':<15} SW2 " + "  ".join(f"{b}: {v['sw2']:.4f} ({v['sampler']})" for b, v in best.items())
        + f"  EM-1000: {em_1000['sw2']:.4f}  [{time.perf_counter() - start:.1f}s sampling]")
    metrics = {"nll": nll, "sw2": sw, "best": best, "em_1000": em_1000}
    return metrics, samples_20[best["20"]["sampler"]] if best["20"]["sampler"] else em.samples


# -------------------------------------------------------------------------------------- reports
def _fmt(x: float | None, digits: int = 3) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def table(results: dict) -> str:
    cfg = results["config"]
    lines = ["# Diffusion paths at equal training steps", "",
             f"{cfg['steps']} training steps per path (batch 256, lr 1e-3, warm-up {cfg['warmup_steps']}, EMA 0.999), "
             f"TimeMLP 128x4 + Fourier(64, 16), seed {cfg['seed']}; torch {cfg['torch']}, {cfg['threads']} thread; "
             f"wall {results['wall_seconds']:.0f} s{' (quick smoke run)' if cfg['quick'] else ''}.",
             f"NLL: held-out, first {cfg['nll_points']} test points, probability-flow ODE with exact divergence "
             f"(dopri5, tol 1e-5, eps 1e-5), +- one standard error. Sliced W2: {cfg['samples']} samples vs "
             f"{cfg['samples']} held-out points, 256 fixed directions; samplers stop at eps = {EPS}. "
             f"Column k NFE: best of DPM-Solver++(2M) and DDIM on the log-SNR grid (k NFE) and Heun on the EDM grid "
             f"(2N - 1 <= k NFE); dpm = DPM-Solver++(2M), heun = Heun, ddim = DDIM eta=0.", ""]
    short = {"dpm_solver++ 2M": "dpm", "heun (edm grid)": "heun", "ddim eta=0": "ddim", None: "-"}
    for name, fl in results["floor"].items():
        lines.append(f"Floor ({name}): sliced W2 {fl['mean']:.4f} +- {fl['sd']:.4f} ({fl['method']}).")
    lines += ["", "| dataset | path | NLL nats/dim | exact data NLL | train s | SW2 @10 NFE | SW2 @20 NFE | SW2 @50 NFE | SW2 EM-1000 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        nll = r["nll"]
        cells = [f"{_fmt(b['sw2'], 4)} ({short[b['sampler']]})" for b in r["best"].values()]
        lines.append(f"| {r['dataset']} | {r['path']} | {_fmt(nll['nll_nats_per_dim'])} +- {_fmt(nll['nll_stderr'])} | "
                     f"{_fmt(nll['data_nll_nats_per_dim'])} | {r['train_seconds']:.0f} | {' | '.join(cells)} | "
                     f"{_fmt(r['em_1000']['sw2'], 4)} |")
    lines += ["", "## Every sampler (sliced W2; NFE in brackets)", "",
              "| dataset | path | sampler | " + " | ".join(f"budget {b}" for b in BUDGETS) + " |",
              "|---|---|---|" + "---|" * len(BUDGETS)]
    for r in results["runs"]:
        for sampler, by_budget in r["sw2"].items():
            lines.append(f"| {r['dataset']} | {r['path']} | {sampler} | "
                         + " | ".join(f"{_fmt(v['sw2'], 4)} ({v['nfe']})" for v in by_budget.values()) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, samples: dict, held_out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(results["floor"])
    names = [p.name for p in PATHS]
    colors = dict(zip(names, plt.cm.tab10.colors))
    short = {"dpm_solver++ 2M": "dpm", "heun (edm grid)": "heun", "ddim eta=0": "ddim"}
    fig = plt.figure(figsize=(15, 5.5 + 3 * len(datasets)))
    top, *rows = fig.subfigures(1 + len(datasets), 1, height_ratios=[5.5] + [3] * len(datasets))
    axes = top.subplots(1, len(datasets), squeeze=False)[0]
    for ax, name in zip(axes, datasets):
        for r in (r for r in results["runs"] if r["dataset"] == name):
            pts = [(int(b), v["sw2"], short.get(v["sampler"], "-")) for b, v in r["best"].items()]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colors[r["path"]], label=r["path"])
            for b, y, s in pts:
                if math.isfinite(y):
                    ax.annotate(s, (b, y), textcoords="offset points", xytext=(5, 3), fontsize=7, color=colors[r["path"]])
            ax.axhline(r["em_1000"]["sw2"], color=colors[r["path"]], ls=":", lw=1)
        fl = results["floor"][name]
        ax.axhline(fl["mean"], color="black", ls="--", lw=1.2, label="statistical floor (exact samples vs held-out)")
        ax.plot([], [], color="gray", ls=":", lw=1, label="Euler-Maruyama, 1000 steps (path colour)")
        ax.set(xscale="log", yscale="log", xticks=list(BUDGETS), xlabel="NFE budget (best sampler named at each point)",
               ylabel="sliced W2 to held-out data", title=f"{name}: sliced W2 vs NFE (floor {fl['mean']:.3f})")
        ax.set_xticklabels([str(b) for b in BUDGETS])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    top.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=6, fontsize=9, frameon=False)
    top.subplots_adjust(bottom=0.22)
    for sub, name in zip(rows, datasets):
        panels = sub.subplots(1, len(names) + 1, squeeze=False)[0]
        sets = [("held-out data", held_out[name])] + [(p, samples[name][p]) for p in names]
        for ax, (label, x) in zip(panels, sets):
            x = x[:2000].numpy()
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4, color="black" if label == "held-out data" else colors[label])
            ax.set(xlim=(-4.5, 4.5), ylim=(-4.5, 4.5), aspect="equal", xticks=[], yticks=[])
            ax.set_title(label if label == "held-out data" else f"{label} @20 NFE", fontsize=9)
        sub.suptitle(f"{name}: samples (2000 shown)", fontsize=10)
        sub.subplots_adjust(top=0.8)
    cfg = results["config"]
    top.suptitle(f"Paths at {cfg['steps']} training steps each; dashed: statistical floor")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 steps, 1000 samples, checkerboard only")
    parser.add_argument("--steps", type=int, default=None, help="training steps per path (default 5000; quick 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for paths.{json,md,png} (default benchmarks/results; quick: the temp directory)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # see the module docstring
    wall = time.perf_counter()
    args.steps = args.steps or (300 if args.quick else 5000)
    args.samples = 1000 if args.quick else 5000
    args.nll_points = 100 if args.quick else 1000
    out_dir = args.out or (Path(tempfile.gettempdir()) / "sde_benchmarks" if args.quick else RESULTS)
    datasets = DATASETS[:1] if args.quick else DATASETS

    results = {"config": {"quick": args.quick, "steps": args.steps, "warmup_steps": min(500, args.steps // 2),
                          "seed": args.seed, "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "python": platform.python_version(), "samples": args.samples, "nll_points": args.nll_points,
                          "budgets": list(BUDGETS), "eps": EPS, "sw2_projections": 256, "sw2_seed": SW2_SEED,
                          "prior_seed": PRIOR_SEED, "em_seed": EM_SEED},
               "floor": {}, "runs": []}
    samples, held_out = {}, {}
    for name in datasets:
        data = sd.toy_dataset(name, n_train=50_000, n_test=5_000, seed=args.seed)
        results["floor"][name] = floor(data, args.samples)
        print(f"{name}: sliced W2 floor {results['floor'][name]['mean']:.4f} +- {results['floor'][name]['sd']:.4f}")
        held_out[name], samples[name] = data.test[: args.samples], {}
        for path in PATHS:
            record, samples[name][path.name] = run_path(path, data, args, print)
            results["runs"].append(record)
    results["wall_seconds"] = time.perf_counter() - wall

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / "paths"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    text = table(results)
    stem.with_suffix(".md").write_text(text)
    plot(results, samples, held_out, stem.with_suffix(".png"))
    print(text)
    print(f"wrote {stem}.{{json,md,png}} ({results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
