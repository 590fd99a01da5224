"""Training recipes on every path: which recipe makes a learned score as good as its solvers.

Paths (``sde-train`` config overrides): VP (``sde=vp``), sub-VP (``sde=subvp``), VE (``sde=ve``), EDM
(``sde=edm``) and rectified flow (``sde=rectified_flow model=mlp_velocity loss=flow_matching``).
Recipes, each a list of overrides on top of the path's, exactly what a user types:

  - ``default``: the path as it ships (noise prediction and the eps loss; flow matching for
    rectified flow; VE and EDM behind EDM's preconditioning, their configs' default);
  - ``raw network``: ``model.preconditioning=none``, VE's and EDM's default before it (``--only``);
  - ``EDM precond``: ``model.preconditioning=edm`` (Karras et al. 2022, Table 1; ``sigma_data=auto``);
  - ``EDM``: preconditioning with EDM's log-normal proposal and weight (``loss=edm``);
  - ``EDM + uncertainty``: EDM with the learned per-noise-level uncertainty of EDM2 (Karras et al.
    2024, Eq. 21; ``loss.learned_weighting=true``);
  - ``min-SNR``: ``loss.weighting=min_snr`` (Hang et al. 2023, gamma = 5);
  - ``sigmoid``: ``loss.weighting=sigmoid`` (Kingma & Gao 2023);
  - ``logit-normal t``: ``loss.proposal=logit_normal`` (Esser et al. 2024; rectified flow's recipe);
  - ``likelihood``: ``loss=dsm_importance``, the likelihood weighting drawn from uniform log-SNR (Song,
    Durkan et al. 2021), the objective that bounds the NLL; and the same with batch 512 and a cosine
    schedule, the best long-run option measured before these recipes.

The recipes with EDM's preconditioning train rectified flow's path with the noise-predicting MLP
(``model=mlp``) and the eps loss in place of the velocity MLP and flow matching: the velocity MLP
cannot be preconditioned, and flow matching's weighting is the velocity's. A recipe that this
checkout does not have, or that the config layer refuses for a path (``logit_normal`` on EDM's path,
whose time runs to 80), is recorded with its one-line reason and skipped: the table says which. Every run builds its experiment through the config layer
(:func:`sde_diffusion.app.runs.build_experiment`), trains with the ``Trainer`` from the same seed, and
its EMA model is judged as ``benchmarks/paths.py`` judges one (:func:`paths.evaluate`): held-out NLL
through the probability-flow ODE with the exact divergence (dopri5, tol 1e-5), its NFE, and sliced
W2 at 10, 20 and 50 NFE (the best of DPM-Solver++(2M), DDIM and Heun) and by 1000-step
Euler-Maruyama, beside the statistical floor. Two budgets:

  - equal steps (``--steps``, default 2,000);
  - equal CPU time (``--minutes``, default off): each run's steps are its steps per CPU second of
    its own process (``time.process_time``; the difference between a 300-step and a 900-step pilot,
    after a 50-step one that pays the process's one-time costs, so that the start-up, which dwarfs
    300 steps of the MLP, cancels) times the budget. CPU time,
    not wall time: runs side by side on a shared machine get the same budget as alone (short of what
    they take from each other's caches).

Everything runs on one thread (``torch.set_num_threads(1)``). Two more studies, each with its own
results file:

  - ``--digits``: ``experiment=digits`` (the class-conditional U-Net on scikit-learn's 8x8 digits)
    with the paths and recipes of :data:`DIGITS_RUNS`, 3,000 steps: held-out bits/dim on all 297
    held-out digits (Hutchinson divergence, as ``sde-train`` reports it) and sliced W2 in pixel space;
    ``results/recipes_digits.{json,md}``.
  - ``--posthoc-ema``: post-hoc EMA (EDM2, Karras et al. 2024, Sec. 3) on the digits at 300 and 3,000
    steps. One run per length with ``train.ema=posthoc``; the fixed-decay EMAs (with and without
    warm-up) and one directly tracked power-function profile are kept beside it on the same
    trajectory of raw weights, so every average is of the very same weights. Held-out bits/dim of
    each post-hoc width (reconstructed from the snapshots), each fixed decay and the raw weights,
    on the same held-out digits with the same dequantization and probes;
    ``results/recipes_posthoc_ema.{json,md,png}``.

    python benchmarks/recipes.py              # checkerboard and eight Gaussians, 2,000 steps: about an hour
    python benchmarks/recipes.py --minutes 10 --only "VP:default" "rectified flow:default"  # equal CPU minutes
    python benchmarks/recipes.py --digits     # digits, 3,000 steps per run: about 20 min a run
    python benchmarks/recipes.py --posthoc-ema  # post-hoc EMA against fixed decays on the digits: about an hour
    python benchmarks/recipes.py --quick      # smoke run: checkerboard, 200 steps, three recipes (~3 min)
"""

from __future__ import annotations

import argparse
import copy
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
from sde_diffusion.training.ema import EMA
from sde_diffusion.training.posthoc_ema import PowerFunctionEMA, load_snapshots, reconstruct

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
    "likelihood": ["loss=dsm_importance"],
    "likelihood, batch 512, cosine": ["loss=dsm_importance", "train.batch_size=512", "lr_schedule=cosine"],
    "EDM, EMA 0.999 without warm-up": ["model.preconditioning=edm", "loss=edm", "train.ema_warmup=false"],
    "raw network": ["model.preconditioning=none"],
}
QUICK_RECIPES = ("default", "EDM precond", "EDM")
TOY_RECIPES = tuple(r for r in RECIPES if r not in ("likelihood, batch 512, cosine", "EDM, EMA 0.999 without warm-up", "raw network"))
"""The equal-steps grid's recipes (batch 512 doubles a step's work: it is for the equal-minutes runs; the
fixed EMA is for the digits, where it measured best at 3,000 steps: results/recipes_posthoc_ema.md)."""
PILOT_STEPS = 300
DIGITS_RUNS = (("VP", "default"), ("VP", "EDM"), ("EDM", "EDM"), ("VP", "EDM + uncertainty"), ("VP", "likelihood"),
               ("VP", "EDM, EMA 0.999 without warm-up"))
"""The (path, recipe) pairs of ``--digits`` (rectified flow's velocity MLP does not fit the digits' U-Net)."""
DIGITS_STEPS = 3000
POSTHOC_STEPS = (300, 3000)
POSTHOC_WIDTHS = (0.03, 0.05, 0.1, 0.15, 0.25)
"""The post-hoc widths sigma_rel evaluated (EDM2 found its best between 0.05 and 0.2)."""
FIXED_DECAYS = {300: (0.9, 0.95, 0.99, 0.999), 3000: (0.99, 0.995, 0.999, 0.9995)}
"""The fixed EMA decays kept beside the post-hoc run, per length: from a tenth of the run to twice it."""
TRACKED_WIDTH = 0.15
"""A power-function profile tracked directly beside the run, to compare with its reconstruction."""


def compose_run(overrides: list[str]):
    """The ``sde-train`` config of ``overrides`` (what the app would compose)."""
    with initialize_config_module("sde_diffusion.conf", version_base=None):
        return compose(config_name="config", overrides=overrides)


def make_trainer(cfg, seed: int, run_dir: Path | None = None):
    """Build the experiment of ``cfg`` and its Trainer (checkpoints and snapshots in ``run_dir``)."""
    torch.manual_seed(seed)
    exp = build_experiment(cfg)
    labels = exp.data.train_labels if getattr(exp.score_model, "n_classes", None) is not None else None
    trainer = sd.Trainer(exp.score_model, exp.sde, exp.data.train, exp.options, loss_fn=exp.loss_fn, seed=seed,
                         optimizer=exp.optimizer, lr_schedule=exp.lr_schedule, labels=labels, run_dir=run_dir)
    return exp, trainer


def train(cfg, seed: int):
    """Build the experiment of ``cfg`` and train it; returns ``(experiment, trainer, fit)``."""
    exp, trainer = make_trainer(cfg, seed)
    return exp, trainer, trainer.fit()


def base_overrides(dataset: str, seed: int) -> list[str]:
    """What every run on ``dataset`` starts from: the toys' ``data=<name>``, or ``experiment=digits``."""
    data = ["experiment=digits"] if dataset == "digits" else [f"data={dataset}"]
    return [*data, f"seed={seed}", "train.progress=false", "eval_points=0"]


def run(dataset: str, path: str, recipe: str, args, log) -> dict:
    """One (path, recipe) on ``dataset``: trained for ``--steps`` or for ``--minutes`` of its own pace."""
    base = base_overrides(dataset, args.seed)
    path_overrides = PATHS[path]
    if "model.preconditioning=edm" in RECIPES[recipe] and "model=mlp_velocity" in path_overrides:
        # a denoiser in place of the velocity MLP, which cannot be one, and with it the eps loss (flow matching's is the velocity's)
        path_overrides = [o.replace("model=mlp_velocity", "model=mlp") for o in path_overrides if o != "loss=flow_matching"]
    overrides = base + path_overrides + RECIPES[recipe]
    record = {"dataset": dataset, "path": path, "recipe": recipe, "overrides": path_overrides + RECIPES[recipe]}
    try:
        steps = args.steps
        if args.minutes:  # CPU seconds per step: the difference of two pilots (after a first one that pays
            cpu = []  # the process's one-time costs), so that each run's start-up cancels
            for n in (PILOT_STEPS // 6, PILOT_STEPS, 3 * PILOT_STEPS):
                start = time.process_time()
                train(compose_run([*overrides, f"train.steps={n}"]), args.seed)
                cpu.append(time.process_time() - start)
            steps = max(PILOT_STEPS, int(args.minutes * 60 * 2 * PILOT_STEPS / (cpu[2] - cpu[1])))
        cpu = time.process_time()
        exp, trainer, fit = train(compose_run([*overrides, f"train.steps={steps}"]), args.seed)
        cpu = time.process_time() - cpu
    except (ConfigError, ValueError, HydraException, OmegaConfBaseException) as err:  # a recipe this checkout lacks, or refused
        reason = " ".join(str(err).split()).split(" Available options")[0]
        log(f"{dataset:>15} {path:<15} {recipe:<18} skipped: {reason}")
        return {**record, "skipped": reason}
    log(f"{dataset:>15} {path:<15} {recipe:<18} {fit.steps} steps in {fit.seconds:.1f} s ({fit.steps_per_sec:.0f}/s)")
    metrics, _ = evaluate(exp.sde, trainer.ema_model.eval(), exp.data, args, log)
    return {**record, "steps": fit.steps, "train_seconds": fit.seconds, "train_cpu_seconds": cpu,
            "steps_per_sec": fit.steps_per_sec, "last_loss": fit.last_loss, **metrics}


def bits_per_dim(exp, model, args) -> dict:
    """Held-out bits/dim of ``model`` on the first ``args.nll_points`` held-out digits, as
    ``sde-train`` reports it (probability-flow ODE, Hutchinson divergence, one dequantization per
    point), with the same seed for every model so that their differences are paired."""
    data = exp.data
    nll = sd.evaluate_nll(exp.sde, model, data.test, n_points=args.nll_points, seed=args.seed, levels=data.levels,
                          interval_width=data.interval_width)
    return {"bpd": nll["bpd"], "bpd_stderr": nll["bpd_stderr"], "nfe": nll["nfe"], "seconds": nll["seconds"]}


def posthoc_ema(steps: int, args, log) -> dict:
    """One ``train.ema=posthoc`` digits run of ``steps`` steps with the fixed-decay EMAs of
    :data:`FIXED_DECAYS` (with and without warm-up at 0.999) and a profile of :data:`TRACKED_WIDTH`
    kept beside it on the same raw weights; held-out bits/dim of each post-hoc width, each average
    and the raw weights."""
    cfg = compose_run([*base_overrides("digits", args.seed), "train.ema=posthoc", f"train.steps={steps}"])
    with tempfile.TemporaryDirectory() as run_dir:
        exp, trainer = make_trainer(cfg, args.seed, run_dir=Path(run_dir))
        model = trainer.model
        beside = {f"fixed {d:g}": EMA(model, d, warmup=False) for d in FIXED_DECAYS.get(steps, FIXED_DECAYS[300])}
        beside["warm-up 0.999"] = EMA(model, 0.999, warmup=True)  # the digits experiment's own
        beside[f"tracked sigma_rel {TRACKED_WIDTH:g}"] = PowerFunctionEMA(model, TRACKED_WIDTH)
        update = trainer.ema.update

        def update_all() -> None:  # every average sees every step's raw weights
            update()
            for average in beside.values():
                average.update()

        trainer.ema.update = update_all
        fit = trainer.fit()
        log(f"{'digits':>15} post-hoc EMA run: {fit.steps} steps in {fit.seconds:.0f} s ({fit.steps_per_sec:.2f}/s)")
        snapshots = load_snapshots(trainer.snapshot_dir)
        rows = {}

        def judge(name: str, state: dict, **extra) -> None:
            net = copy.deepcopy(model).eval()
            net.load_state_dict(state)
            rows[name] = {**bits_per_dim(exp, net, args), **extra}
            log(f"{'':>15} {name:<28} {rows[name]['bpd']:.4f} +- {rows[name]['bpd_stderr']:.4f} bits/dim "
                f"(NFE {rows[name]['nfe']:.0f}, {rows[name]['seconds']:.0f} s)")

        for width in POSTHOC_WIDTHS:
            rec = reconstruct(snapshots, width)
            judge(f"post-hoc sigma_rel {width:g}", rec.state, sigma_rel=width, kernel_error=rec.kernel_error)
        for name, average in beside.items():
            judge(name, average.module.state_dict())
        judge("raw weights", model.state_dict())
    return {"steps": steps, "steps_per_sec": fit.steps_per_sec, "n_snapshots": len(snapshots), "rows": rows}


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def best_per_path(results: dict) -> list[str]:
    """Each path's best recipe by held-out NLL beside its shipped default, and the issue's targets:
    the best NLL of VE and EDM within 0.03 nats/dim of VP's, VE's 20-NFE ODE samples within 10 % of
    its Euler-Maruyama sliced W2."""
    done = [r for r in results["runs"] if "skipped" not in r and math.isfinite(r["nll"]["nll_nats_per_dim"])]
    lines = ["## Best recipe per path (by held-out NLL)", "",
             "| dataset | path | default NLL | best recipe | its NLL | its SW2 @20 | its SW2 EM-1000 | @20 / EM |",
             "|---|---|---|---|---|---|---|---|"]
    checks = []
    for name in results["floor"]:
        mine = [r for r in done if r["dataset"] == name]
        best = {}
        for path in dict.fromkeys(r["path"] for r in mine):
            runs = [r for r in mine if r["path"] == path]
            top = min(runs, key=lambda r: r["nll"]["nll_nats_per_dim"])
            default = next((r for r in runs if r["recipe"] == "default"), None)
            best[path] = top
            ratio = top["best"]["20"]["sw2"] / top["em_1000"]["sw2"]
            lines.append(f"| {name} | {path} | {_fmt(default['nll']['nll_nats_per_dim']) if default else '-'} | {top['recipe']} | "
                         f"{_fmt(top['nll']['nll_nats_per_dim'])} | {_fmt(top['best']['20']['sw2'], 4)} | "
                         f"{_fmt(top['em_1000']['sw2'], 4)} | {ratio:.2f} |")
        vp_default = next((r for r in mine if r["path"] == "VP" and r["recipe"] == "default"), None)
        if vp_default is not None and "VP" in best:
            vp, vp_best = vp_default["nll"]["nll_nats_per_dim"], best["VP"]["nll"]["nll_nats_per_dim"]
            for path in ("VE", "EDM"):
                if path in best:
                    gap = best[path]["nll"]["nll_nats_per_dim"] - vp
                    checks.append(f"- {name}: {path}'s best NLL ({best[path]['recipe']}) minus VP's default: {gap:+.3f} nats/dim "
                                  f"(target at most +0.03: {'met' if gap <= 0.03 else 'missed'}); minus VP's best "
                                  f"({best['VP']['recipe']}): {best[path]['nll']['nll_nats_per_dim'] - vp_best:+.3f}")
        for r in (r for r in mine if r["path"] == "VE" and r["recipe"] in ("default", best.get("VE", {}).get("recipe"))):
            ratio = r["best"]["20"]["sw2"] / r["em_1000"]["sw2"]
            checks.append(f"- {name}: VE {r['recipe']}: 20-NFE ODE sliced W2 / Euler-Maruyama's = {ratio:.2f} "
                          f"(target at most 1.10: {'met' if ratio <= 1.10 else 'missed'})")
    return [*lines, "", *checks, ""]


def table(results: dict) -> str:
    cfg = results["config"]
    budget = f"{cfg['minutes']} CPU minutes each" if cfg["minutes"] else f"{cfg['steps']} steps each"
    lines = ["# Training recipes on every path", "",
             f"{budget} (the app's defaults otherwise: TimeMLP 128x4, batch and EMA of conf/config.yaml), seed "
             f"{cfg['seed']}; torch {cfg['torch']}, 1 thread; wall {results['wall_seconds']:.0f} s"
             f"{' (quick smoke run)' if cfg['quick'] else ''}. NLL: first {cfg['nll_points']} held-out points, "
             f"exact divergence, dopri5 tol 1e-5, +- one standard error; NFE: the NLL solve's. Sliced W2: "
             f"{cfg['samples']} samples vs as many held-out points; k NFE: best of DPM-Solver++(2M), DDIM, Heun."
             + (f" {cfg['supplement']}" if cfg.get("supplement") else "")
             + (f" Only: {', '.join(cfg['only'])}." if cfg.get("only") else ""), ""]
    for name, fl in results["floor"].items():
        lines.append(f"Floor ({name}): sliced W2 {fl['mean']:.4f} +- {fl['sd']:.4f}.")
    lines += ["", *best_per_path(results), "## Every run", ""]
    lines += ["| dataset | path | recipe | steps | steps/s | NLL nats/dim | exact | NLL NFE | "
              + " | ".join(f"SW2 @{b}" for b in BUDGETS) + " | SW2 EM-1000 |",
              "|---|---|---|---|---|---|---|---|" + "---|" * (len(BUDGETS) + 1)]
    for r in results["runs"]:
        lines.append(_row(f"| {r['dataset']} | {r['path']} | {r['recipe']} |", r, 5, _nll_cells))
    return "\n".join(lines) + "\n"


def _nll_cells(r: dict) -> str:
    nll = r["nll"]
    return (f"{r['steps_per_sec']:.0f} | {_fmt(nll['nll_nats_per_dim'])} +- {_fmt(nll['nll_stderr'])} | "
            f"{_fmt(nll['data_nll_nats_per_dim'])}")


def _bpd_cells(r: dict) -> str:
    return f"{r['steps_per_sec']:.2f} | {_fmt(r['nll']['bpd'])} +- {_fmt(r['nll']['bpd_stderr'])}"


def _row(head: str, r: dict, blanks: int, cells) -> str:
    """One run's table row: ``head``, then its steps, ``cells(r)``, the NLL's NFE and the sliced W2
    columns; a skipped run's reason and ``blanks`` empty cells instead."""
    if "skipped" in r:
        return f"{head} skipped: {r['skipped']} |" + " |" * (len(BUDGETS) + blanks)
    return (f"{head} {r['steps']} | {cells(r)} | {r['nll']['nfe']:.0f} | " + " | ".join(_fmt(b["sw2"], 4) for b in r["best"].values())
            + f" | {_fmt(r['em_1000']['sw2'], 4)} |")


def digits_table(results: dict) -> str:
    cfg = results["config"]
    lines = ["# Training recipes on the digits", "",
             f"`sde-train experiment=digits` (class-conditional U-Net, batch 128, lr 5e-4, EMA 0.999 with warm-up), "
             f"{cfg['steps']} steps each, seed {cfg['seed']}; torch {cfg['torch']}, 1 thread; wall "
             f"{results['wall_seconds']:.0f} s. Bits/dim: all {cfg['nll_points']} held-out digits, probability-flow ODE "
             "(dopri5, tol 1e-5), Hutchinson divergence, one dequantization per point (as sde-train reports it), "
             f"+- one standard error. Sliced W2 in pixel space: {cfg['samples']} unguided samples vs the held-out digits."
             + (f" The runs were made in {cfg['processes']} processes side by side (one thread each, up to four on two "
                "cores), so their steps/s are lower than alone; wall: the longest." if cfg.get("processes", 1) > 1 else ""), "",
             "| path | recipe | steps | steps/s | bits/dim | NFE | " + " | ".join(f"SW2 @{b}" for b in BUDGETS) + " | SW2 EM-1000 |",
             "|---|---|---|---|---|---|" + "---|" * (len(BUDGETS) + 1)]
    for r in results["runs"]:
        lines.append(_row(f"| {r['path']} | {r['recipe']} |", r, 4, _bpd_cells))
    return "\n".join(lines) + "\n"


def posthoc_table(results: dict) -> str:
    cfg = results["config"]
    lines = ["# Post-hoc EMA against fixed decays on the digits", "",
             f"`sde-train experiment=digits train.ema=posthoc` (profiles sigma_rel 0.05 and 0.10, the default snapshots), "
             f"seed {cfg['seed']}; torch {cfg['torch']}, 1 thread; wall {results['wall_seconds']:.0f} s. The fixed-decay "
             "EMAs, the digits experiment's warmed-up 0.999 and a directly tracked power-function profile are averages of "
             "the same raw weights, kept beside the run. Bits/dim on the first "
             f"{cfg['nll_points']} held-out digits (probability-flow ODE, Hutchinson divergence), the same dequantization "
             "and probes for every row, so differences between rows are paired; +- one standard error of the level.", ""]
    for run in results["runs"]:
        rows = run["rows"]
        posthoc = {k: v for k, v in rows.items() if k.startswith("post-hoc")}
        fixed = {k: v for k, v in rows.items() if k.startswith(("fixed", "warm-up"))}
        best_posthoc = min(posthoc, key=lambda k: posthoc[k]["bpd"])
        best_fixed = min(fixed, key=lambda k: fixed[k]["bpd"])
        lines += [f"## {run['steps']} steps ({run['steps_per_sec']:.2f} steps/s, {run['n_snapshots']} snapshots)", "",
                  "| weights | bits/dim | NFE | reconstruction error |", "|---|---|---|---|"]
        for name, r in rows.items():
            mark = " (best)" if name in (best_posthoc, best_fixed) else ""
            err = f"{r['kernel_error']:.1e}" if "kernel_error" in r else ""
            lines.append(f"| {name}{mark} | {r['bpd']:.4f} +- {r['bpd_stderr']:.4f} | {r['nfe']:.0f} | {err} |")
        gap = posthoc[best_posthoc]["bpd"] - fixed[best_fixed]["bpd"]
        lines += ["", f"Best post-hoc width minus best fixed decay: **{gap:+.4f} bits/dim** ({best_posthoc} vs {best_fixed}).", ""]
    return "\n".join(lines)


def posthoc_plot(results: dict, path: Path) -> None:
    """Bits/dim against sigma_rel (post-hoc), with each fixed decay as a horizontal line, one panel a length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["runs"]), figsize=(6.5 * len(results["runs"]), 4.2), squeeze=False)
    for ax, run in zip(axes[0], results["runs"], strict=True):
        rows = run["rows"]
        widths = [(r["sigma_rel"], r["bpd"], r["bpd_stderr"]) for r in rows.values() if "sigma_rel" in r]
        ax.errorbar([w[0] for w in widths], [w[1] for w in widths], yerr=[w[2] for w in widths], marker="o", capsize=3,
                    label="post-hoc EMA (reconstructed)")
        low = min(r["bpd"] for r in rows.values())
        top = low + 0.45  # the differences that matter; a far worse average is named in the legend instead
        for k, (name, r) in enumerate((n, r) for n, r in rows.items() if "sigma_rel" not in r):
            off = r["bpd"] > top
            ax.axhline(min(r["bpd"], top), ls=":" if off else "--", lw=1, color=plt.cm.tab20.colors[(2 * k + 2) % 20],
                       label=f"{name}: {r['bpd']:.3f}" + (" (off scale)" if off else ""))
        ax.set_ylim(low - 0.05, top + 0.02)
        ax.set(xscale="log", xlabel="sigma_rel", ylabel="held-out bits/dim", title=f"digits, {run['steps']} steps")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
            worst = max(r["nll"]["nll_nats_per_dim"] for r in runs)
            row[0].set_ylim(exact - 0.05, worst + 0.05)  # the differences, not the distance from zero
        row[1].axhline(results["floor"][name]["mean"], color="black", ls="--", lw=1, label="statistical floor")
        for ax, what, dashed in zip(row, ("held-out NLL (nats/dim)", "sliced W2 at 20 NFE"), ("exact data NLL", "floor"), strict=True):
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(PATHS))], list(PATHS))
            ax.set(title=f"{name}: {what}\n(lower is better; dashed: {dashed})", ylabel=what)
            ax.grid(True, axis="y", alpha=0.3)
        row[1].set_yscale("log")
    axes[0][1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out_dir: Path, stem: str, results: dict, text: str, *, show: bool = True) -> Path:
    """Write ``<stem>.json`` and ``<stem>.md`` (after every run too, so that a crash loses only the run it hit)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / stem
    path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    path.with_suffix(".md").write_text(text)
    if show:
        print(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: checkerboard, 200 steps, three recipes")
    parser.add_argument("--digits", action="store_true", help="the digits' runs of DIGITS_RUNS instead of the toys")
    parser.add_argument("--posthoc-ema", action="store_true", help="post-hoc EMA against fixed decays on the digits")
    parser.add_argument("--only", nargs="+", default=None, metavar="PATH:RECIPE",
                        help="only these (path, recipe) pairs, e.g. 'VP:default' 'rectified flow:logit-normal t'")
    parser.add_argument("--combine", nargs="+", type=Path, default=None, metavar="JSON",
                        help="write recipes_digits.{json,md} from the JSON files of --digits --only runs made side by side")
    parser.add_argument("--nll-points", type=int, default=None,
                        help="held-out points of the NLL (default: toys 1000, digits 297, post-hoc EMA 100)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 2000; quick 200)")
    parser.add_argument("--minutes", type=float, default=None, help="equal CPU minutes per run instead of equal steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", nargs="+", default=None, choices=DATASETS, help="the toys to run (default both)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for recipes.{json,md,png} (default benchmarks/results; quick: the temp directory)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wall = time.perf_counter()
    out_dir = args.out or (Path(tempfile.gettempdir()) / "sde_benchmarks" if args.quick else RESULTS)
    config = {"seed": args.seed, "torch": torch.__version__, "python": platform.python_version()}
    if args.combine:
        parts = [json.loads(f.read_text()) for f in args.combine]
        results = {"config": {**parts[0]["config"], "runs": [r for p in parts for r in p["config"]["runs"]],
                              "processes": len(parts)},
                   "runs": [r for p in parts for r in p["runs"]], "wall_seconds": max(p["wall_seconds"] for p in parts)}
        write(out_dir, "recipes_digits", results, digits_table(results))
        return
    if args.posthoc_ema:
        args.nll_points = args.nll_points or 100
        steps = (args.steps,) if args.steps else POSTHOC_STEPS
        results = {"config": {**config, "nll_points": args.nll_points, "widths": POSTHOC_WIDTHS}, "runs": []}
        for n in steps:
            results["runs"].append(posthoc_ema(n, args, print))
            results["wall_seconds"] = time.perf_counter() - wall
            write(out_dir, "recipes_posthoc_ema", results, posthoc_table(results), show=False)
        path = write(out_dir, "recipes_posthoc_ema", results, posthoc_table(results))
        posthoc_plot(results, path.with_suffix(".png"))
        return
    if args.digits:
        args.steps = args.steps or DIGITS_STEPS
        args.nll_points = args.nll_points or 297
        args.samples, args.minutes, args.divergence = 297, None, "auto"
        pairs = [tuple(p.split(":", 1)) for p in args.only] if args.only else DIGITS_RUNS
        results = {"config": {**config, "steps": args.steps, "nll_points": args.nll_points, "samples": args.samples,
                              "runs": [list(p) for p in pairs]}, "runs": []}
        stem = "recipes_digits" if not args.only else "recipes_digits_only"
        for path_name, recipe in pairs:
            results["runs"].append(run("digits", path_name, recipe, args, print))
            results["wall_seconds"] = time.perf_counter() - wall
            write(out_dir, stem, results, digits_table(results), show=False)
        write(out_dir, stem, results, digits_table(results))
        return
    args.steps = args.steps or (200 if args.quick else 2000)
    args.samples = 1000 if args.quick else 5000
    args.nll_points = args.nll_points or (100 if args.quick else 1000)
    datasets = args.datasets or (DATASETS[:1] if args.quick else DATASETS)
    recipes = QUICK_RECIPES if args.quick else TOY_RECIPES
    results = {"config": {"quick": args.quick, "steps": args.steps, "minutes": args.minutes, "seed": args.seed,
                          "torch": torch.__version__, "python": platform.python_version(), "samples": args.samples,
                          "nll_points": args.nll_points, "recipes": {k: RECIPES[k] for k in recipes}, "paths": PATHS},
               "floor": {}, "runs": []}
    pairs = [tuple(p.split(":", 1)) for p in args.only] if args.only else [(p, r) for p in PATHS for r in recipes]
    if args.only:
        results["config"]["only"] = args.only
    for name in datasets:
        data = build_dataset(compose_run([f"data={name}"]))  # the held-out data every run of it is judged on
        results["floor"][name] = floor(data, args.samples)
        for path_name, recipe in pairs:
            results["runs"].append(run(name, path_name, recipe, args, print))
            results["wall_seconds"] = time.perf_counter() - wall
            write(out_dir, f"recipes_{args.minutes:g}min" if args.minutes else "recipes", results, table(results), show=False)
    stem = write(out_dir, f"recipes_{args.minutes:g}min" if args.minutes else "recipes", results, table(results))
    plot(results, stem.with_suffix(".png"))
    print(f"wrote {stem}.{{json,md,png}} ({results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
