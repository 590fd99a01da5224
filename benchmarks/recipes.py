"""Training recipes on every path: which recipe makes a learned score as good as its solvers.

Paths (``sde-train`` config overrides): VP (``sde=vp``), sub-VP (``sde=subvp``), VE (``sde=ve``), EDM
(``sde=edm``) and rectified flow (``sde=rectified_flow model=mlp_velocity loss=flow_matching``).
Recipes, each a list of overrides on top of the path's, exactly what a user types:

  - ``default``: the path as it ships (noise prediction and the eps loss; flow matching for
    rectified flow);
  - ``EDM precond``: ``model.preconditioning=edm`` (Karras et al. 2022, Table 1; ``sigma_data=auto``);
  - ``EDM``: preconditioning with EDM's log-normal proposal and weight (``loss=edm``);
  - ``EDM + uncertainty``: EDM with the learned per-noise-level uncertainty of EDM2 (Karras et al.
    2024, Eq. 21; ``loss.learned_weighting=true``);
  - ``min-SNR``: ``loss.weighting=min_snr`` (Hang et al. 2023, gamma = 5);
  - ``sigmoid``: ``loss.weighting=sigmoid`` (Kingma & Gao 2023);
  - ``logit-normal t``: ``loss.proposal=logit_normal`` (Esser et al. 2024; rectified flow's recipe).

A recipe that this checkout does not have, or that the config layer refuses for a path (EDM's
preconditioning of a velocity network), is recorded with its one-line reason and skipped: the
table says which. Every run builds its experiment through the config layer
(:func:`sde_diffusion.app.runs.build_experiment`), trains with the ``Trainer`` from the same seed, and
its EMA model is judged as ``benchmarks/paths.py`` judges one (:func:`paths.evaluate`): held-out NLL
through the probability-flow ODE with the exact divergence (dopri5, tol 1e-5), its NFE, and sliced
W2 at 10, 20 and 50 NFE (the best of DPM-Solver++(2M), DDIM and Heun) and by 1000-step
Euler-Maruyama, beside the statistical floor. Two budgets:

  - equal steps (``--steps``, default 2,000);
  - equal CPU time (``--minutes``, default off): each run's steps are its measured steps/s (a
    100-step pilot) times the budget.

Everything runs on one thread (``torch.set_num_threads(1)``).

    python benchmarks/recipes.py              # checkerboard and eight Gaussians, 2,000 steps: about an hour
    python benchmarks/recipes.py --minutes 10 # equal CPU minutes instead
    python benchmarks/recipes.py --quick      # smoke run: checkerboard, 200 steps, three recipes (~3 min)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from paths import BUDGETS, evaluate, floor

import sde_diffusion as sd
from sde_diffusion.app.config import ConfigError, build_dataset
from sde_diffusion.app.runs import build_experiment

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("checkerboard", "eight_gaussians")
PATHS = {
    "VP": ["sde=vp"],
    "sub-VP": ["sde=subvp"],
    "VE": ["sde=ve"],
    "EDM": ["sde=edm"],
    "rectified flow": ["sde=rectified_flow", "model=mlp_velocity", "loss=flow_matching"],
}
RECIPES = {
    "default": [],
    "EDM precond": ["model.preconditioning=edm"],
    "EDM": ["model.preconditioning=edm", "loss=edm"],
    "EDM + uncertainty": ["model.preconditioning=edm", "loss=edm", "loss.learned_weighting=true"],
    "min-SNR": ["loss.weighting=min_snr"],
    "sigmoid": ["loss.weighting=sigmoid"],
    "logit-normal t": ["loss.proposal=logit_normal"],
}
QUICK_RECIPES = ("default", "EDM precond", "EDM")
PILOT_STEPS = 100


def compose_run(overrides: list[str]):
    """The ``sde-train`` config of ``overrides`` (what the app would compose)."""
    with initialize_config_module("sde_diffusion.conf", version_base=None):
        return compose(config_name="config", overrides=overrides)


def train(cfg, seed: int):
    """Build the experiment of ``cfg`` and train it; returns ``(experiment, trainer, fit)``."""
    torch.manual_seed(seed)
    exp = build_experiment(cfg)
    labels = exp.data.train_labels if getattr(exp.score_model, "n_classes", None) is not None else None
    trainer = sd.Trainer(exp.score_model, exp.sde, exp.data.train, exp.options, loss_fn=exp.loss_fn, seed=seed,
                         optimizer=exp.optimizer, lr_schedule=exp.lr_schedule, labels=labels)
    return exp, trainer, trainer.fit()


def run(dataset: str, path: str, recipe: str, args, log) -> dict:
    """One (path, recipe) on ``dataset``: trained for ``--steps`` or for ``--minutes`` of its own pace."""
    base = [f"data={dataset}", f"seed={args.seed}", "train.progress=false", "eval_points=0"]
    overrides = base + PATHS[path] + RECIPES[recipe]
    record = {"dataset": dataset, "path": path, "recipe": recipe, "overrides": PATHS[path] + RECIPES[recipe]}
    try:
        steps = args.steps
        if args.minutes:
            _, _, pilot = train(compose_run([*overrides, f"train.steps={PILOT_STEPS}"]), args.seed)
            steps = max(PILOT_STEPS, int(args.minutes * 60 * pilot.steps_per_sec))
        exp, trainer, fit = train(compose_run([*overrides, f"train.steps={steps}"]), args.seed)
    except (ConfigError, ValueError, HydraException, OmegaConfBaseException) as err:  # a recipe this checkout lacks, or refused
        reason = " ".join(str(err).split()).split(" Available options")[0]
        log(f"{dataset:>15} {path:<15} {recipe:<18} skipped: {reason}")
        return {**record, "skipped": reason}
    log(f"{dataset:>15} {path:<15} {recipe:<18} {fit.steps} steps in {fit.seconds:.1f} s ({fit.steps_per_sec:.0f}/s)")
    metrics, _ = evaluate(exp.sde, trainer.ema_model.eval(), exp.data, args, log)
    return {**record, "steps": fit.steps, "train_seconds": fit.seconds, "steps_per_sec": fit.steps_per_sec,
            "last_loss": fit.last_loss, **metrics}


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def table(results: dict) -> str:
    cfg = results["config"]
    budget = f"{cfg['minutes']} CPU minutes each" if cfg["minutes"] else f"{cfg['steps']} steps each"
    lines = ["# Training recipes on every path", "",
             f"{budget} (the app's defaults otherwise: TimeMLP 128x4, batch and EMA of conf/config.yaml), seed "
             f"{cfg['seed']}; torch {cfg['torch']}, 1 thread; wall {results['wall_seconds']:.0f} s"
             f"{' (quick smoke run)' if cfg['quick'] else ''}. NLL: first {cfg['nll_points']} held-out points, "
             f"exact divergence, dopri5 tol 1e-5, +- one standard error; NFE: the NLL solve's. Sliced W2: "
             f"{cfg['samples']} samples vs as many held-out points; k NFE: best of DPM-Solver++(2M), DDIM, Heun.", ""]
    for name, fl in results["floor"].items():
        lines.append(f"Floor ({name}): sliced W2 {fl['mean']:.4f} +- {fl['sd']:.4f}.")
    lines += ["", "| dataset | path | recipe | steps | steps/s | NLL nats/dim | exact | NLL NFE | "
              + " | ".join(f"SW2 @{b}" for b in BUDGETS) + " | SW2 EM-1000 |",
              "|---|---|---|---|---|---|---|---|" + "---|" * (len(BUDGETS) + 1)]
    for r in results["runs"]:
        head = f"| {r['dataset']} | {r['path']} | {r['recipe']} |"
        if "skipped" in r:
            lines.append(f"{head} skipped: {r['skipped']} |" + " |" * (len(BUDGETS) + 5))
            continue
        nll = r["nll"]
        lines.append(f"{head} {r['steps']} | {r['steps_per_sec']:.0f} | {_fmt(nll['nll_nats_per_dim'])} +- "
                     f"{_fmt(nll['nll_stderr'])} | {_fmt(nll['data_nll_nats_per_dim'])} | {nll['nfe']:.0f} | "
                     + " | ".join(_fmt(b["sw2"], 4) for b in r["best"].values()) + f" | {_fmt(r['em_1000']['sw2'], 4)} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Held-out NLL (left) and sliced W2 at 20 NFE (right) of every recipe, one group of bars a path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(results["floor"])
    recipes = list(dict.fromkeys(r["recipe"] for r in results["runs"] if "skipped" not in r))  # skipped everywhere: no bars
    fig, axes = plt.subplots(len(datasets), 2, figsize=(14, 4.2 * len(datasets)), squeeze=False)
    width = 0.8 / max(1, len(recipes))
    for row, name in zip(axes, datasets, strict=True):
        runs = [r for r in results["runs"] if r["dataset"] == name and "skipped" not in r]
        for k, recipe in enumerate(recipes):
            mine = {r["path"]: r for r in runs if r["recipe"] == recipe}
            xs = [i + k * width for i, p in enumerate(PATHS) if p in mine]
            color = plt.cm.tab10.colors[k % 10]
            row[0].bar(xs, [mine[p]["nll"]["nll_nats_per_dim"] for p in PATHS if p in mine], width, label=recipe, color=color)
            row[1].bar(xs, [mine[p]["best"]["20"]["sw2"] for p in PATHS if p in mine], width, label=recipe, color=color)
        exact = next((r["nll"]["data_nll_nats_per_dim"] for r in runs), None)
        if exact is not None:
            row[0].axhline(exact, color="black", ls="--", lw=1, label="exact data NLL")
        row[1].axhline(results["floor"][name]["mean"], color="black", ls="--", lw=1, label="statistical floor")
        for ax, what, dashed in zip(row, ("held-out NLL (nats/dim)", "sliced W2 at 20 NFE"), ("exact data NLL", "floor"), strict=True):
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(PATHS))], list(PATHS))
            ax.set(title=f"{name}: {what} (lower is better; dashed: {dashed})", ylabel=what)
            ax.grid(True, axis="y", alpha=0.3)
        row[1].set_yscale("log")
    axes[0][1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: checkerboard, 200 steps, three recipes")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 2000; quick 200)")
    parser.add_argument("--minutes", type=float, default=None, help="equal CPU minutes per run instead of equal steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for recipes.{json,md,png} (default benchmarks/results; quick: the temp directory)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wall = time.perf_counter()
    args.steps = args.steps or (200 if args.quick else 2000)
    args.samples = 1000 if args.quick else 5000
    args.nll_points = 100 if args.quick else 1000
    out_dir = args.out or (Path(tempfile.gettempdir()) / "sde_benchmarks" if args.quick else RESULTS)
    datasets = DATASETS[:1] if args.quick else DATASETS
    recipes = QUICK_RECIPES if args.quick else tuple(RECIPES)
    results = {"config": {"quick": args.quick, "steps": args.steps, "minutes": args.minutes, "seed": args.seed,
                          "torch": torch.__version__, "python": platform.python_version(), "samples": args.samples,
                          "nll_points": args.nll_points, "recipes": {k: RECIPES[k] for k in recipes}, "paths": PATHS},
               "floor": {}, "runs": []}
    for name in datasets:
        data = build_dataset(compose_run([f"data={name}"]))  # the held-out data every run of it is judged on
        results["floor"][name] = floor(data, args.samples)
        for path in PATHS:
            for recipe in recipes:
                results["runs"].append(run(name, path, recipe, args, print))
    results["wall_seconds"] = time.perf_counter() - wall
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / "recipes"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    text = table(results)
    stem.with_suffix(".md").write_text(text)
    plot(results, stem.with_suffix(".png"))
    print(text)
    print(f"wrote {stem}.{{json,md,png}} ({results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
