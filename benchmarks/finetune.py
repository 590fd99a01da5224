"""Latent diffusion and fine-tuning on the digits: a pixel model against a latent model at equal training
time; a model trained without the nines, then taught the nine from 5 and from 10 images by LoRA, by a new
class embedding and by full fine-tuning with and without prior preservation.

Everything trains with the Trainer on the digits (1,500 training digits, 17 grey levels on [-1, 1), left
bin edges; seed SEED), in this process and on one thread (--threads), and is judged on the 297 held-out
digits; the EMA weights are evaluated (the configs' EMA warm-up: decay min(0.999, (1 + n) / (10 + n))).
Run directories (the autoencoder's and the base model's, which later runs load, and the fine-tuning runs')
are written as sde-train writes them (``.hydra/config.yaml``, ``checkpoints/last.pt``) into a temporary
directory (--runs DIR keeps them).

Samples everywhere: DPM-Solver++(2M) (``sd.dpm_solver_pp``, deterministic) on
``sd.log_snr_time_grid(sde, SAMPLER_STEPS = 50, 1e-3)``, classifier-free guidance ``GuidedScore(model,
labels, CFG_W = 1)`` (``2 s(x, t, y) - s(x, t, null)``), one batch per draw, prior noise seeded SEED
(``draw_samples``), so every model of a comparison starts its samples from the same noise and the
comparisons are paired; clamped to [-1, 1]. Judge: a clean-data classifier (scikit-learn
LogisticRegression(max_iter=2000) on the 64 pixels of the 1,500 clean training digits of all ten classes,
as in benchmarks/guidance.py; its held-out accuracy is reported) predicts each sample's class; accuracy is
the fraction predicted as the label asked for, +- the binomial s.e. sqrt(p (1 - p) / n). Verdicts: a
difference beyond 2 s.e.; "not resolved" within.

A. Pixel vs latent diffusion at equal training time

  - autoencoder: ``train_task=autoencoder data=digits`` (``sde-train task=autoencoder``: 8x8 -> 4x4x2
    latents, KL weight 0.01, decoder discretized to the 17 levels), STEPS["autoencoder"] = 2000 steps; its
    training time is reported apart and not counted in the budget below; its own held-out VAE bound
    (bits/dim) and LDM's scale factor come from sde-train's summary (``tasks.AutoencoderTask``);
  - pixel model ``experiment=digits`` (class-conditional 1.1M-parameter U-Net on 8x8) and latent model
    ``experiment=latent_digits autoencoder_dir=<the autoencoder>`` (the U-Net on the 4x4x2 scaled latents,
    4 latent draws per training digit), each trained for the same wall-clock budget BUDGET_SECONDS = 300 s:
    train.steps is set far above reach and a Trainer callback stops training after the first step past the
    budget (both under the same load); the steps each got are reported;
  - held-out bits/dim of the 297 held-out digits (NLL_POINTS, None = all) under the unconditional (null
    label) model, as sde-eval computes them: pixel, ``evaluate_nll`` by the probability-flow ODE (uniform
    dequantization, Hutchinson divergence with one Rademacher probe, dopri5 at rtol = atol = 1e-5): the
    dequantized model's exact NLL, an upper bound on the digits' discrete NLL; latent,
    ``evaluate_nll(bound="latent", codec=...)``: LSGM's bound E_q[-log p(x|z) + log q(z|x) - log p(z)] with
    one latent draw per digit and the prior's log p(z) by the same ODE, an upper bound on the same discrete
    NLL; the autoencoder's own VAE bound (standard-normal prior) beside them;
  - sampling time per 100 samples (10 per label, CFG w = 1; the latent model's time includes decoding),
    median of TIMING_REPEATS = 3 draws;
  - clean-classifier accuracy of PER_CLASS_A = 20 samples per label (200), +- s.e.; the difference
    pixel - latent with the s.e. of independent estimates;
  - picture: finetune_latent.png, 10 samples of each label (rows) from each model.

B. Teaching a new class

  - base model without the nines: ``experiment=digits data=digits_few data.classes=[0,1,2,3,4,5,6,7,8]
    data.per_class=null model.net.n_classes=auto`` (9 classes; its null label is 9), STEPS["base"] = 1500;
  - fine-tuning runs, ``init_from=<base> experiment=digits data=digits_few data.classes=[9]
    data.per_class=k`` for k in SHOTS = (5, 10) (the first 5 of the 10 nines are the 5), with
    ``finetune=lora finetune.rank=r`` for r in (1, 4, 16) (alpha = r, adapters on every linear and
    convolution layer but the time and class embeddings), ``finetune=embedding`` (one new embedding row),
    ``finetune=full finetune.prior_preservation=0`` and ``finetune=full finetune.prior_preservation=1``
    (DreamBooth's lambda = 1 with 200 prior samples of classes 0..8 drawn by the base model; LoRA and the
    embedding run take the default lambda = 0, no prior preservation); each STEPS["finetune"] = 300 steps
    with experiment=digits's training settings (batch 128, lr 5e-4, EMA 0.999 with warm-up) but warm-up 30
    and no label dropout (``train.label_dropout=0``: the null label, whose score classifier-free guidance
    subtracts for every class, stays the base model's), the embedding run at lr 5e-3 (textual inversion's
    usual tenfold rate: under Adam a lone row moves at most about lr per step), and the same seed, so the
    LoRA adapters start alike; ``sampler=dpm_solver
    sampler.grid.n_steps=50`` only sets how the prior-preservation samples are drawn. The new class gets a
    new embedding row in every mode (sde_diffusion.finetune.grow_class_embedding), the null label moves to 10;
  - metrics of each fine-tuned model: accuracy of N_NINES = 50 generated nines (label 9, CFG w = 1); the
    mean accuracy over classes 0..8 of OTHERS_PER_CLASS = 10 samples each (90) before (the base model) and
    after fine-tuning, their paired difference (the same prior noise and labels) +- its s.e. over the 90
    samples (the degradation); trainable parameters (``requires_grad``); the file a user keeps: sde-train's
    ``adapters.pt`` (LoRA: A, B and the new row; embedding: the new row) or, for full fine-tuning, the EMA
    weights (``torch.save(state_dict)``), in bytes; training minutes (the Trainer's wall clock, plus the
    prior samples' drawing for prior preservation); differences between methods are paired over the same
    50 prior noises, +- the s.e. of the per-sample differences;
  - references: the base model asked for label 9 (its null label: unconditional samples of 0..8); part A's
    pixel model (all ten classes) on label 9;
  - picture: finetune.png, per number of images the real nines used and 10 generated nines of each method,
    and one sample of each class 0..8 before and after.

Runs on --threads torch threads (default 1). Writes benchmarks/results/finetune.{json,md,png} and
finetune_latent.png; --quick (a smoke run of about 5 minutes: QUICK_STEPS with warm-up 10 and EMA 0.99, a 20 s budget, 20 held-out digits,
fewer samples, 20 prior samples) writes finetune_quick* instead.

Time of the full run: about 40 minutes on one quiet core (the U-Net at about 4 steps/s: autoencoder 7 min,
the two budgets 10, bits/dim and samples of part A 3, base model 6, twelve fine-tuning runs 14, their samples
2); about 55 minutes on a core shared with another job (U-Net 2.4 steps/s measured).

    python benchmarks/finetune.py            # full: about 40 minutes on one quiet core
    python benchmarks/finetune.py --quick
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from guidance import _acc, _flat, _verdict, clean_classifier  # noqa: E402  (benchmarks/: the shared digits judges)
from hydra import compose, initialize_config_module  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

import sde_diffusion as sd  # noqa: E402
from sde_diffusion.tasks import AutoencoderTask, Finished  # noqa: E402
from sde_diffusion.tasks.score import _finetune_summary, with_prior_samples  # noqa: E402
from sde_diffusion.app.runs import build_experiment  # noqa: E402
from sde_diffusion.finetune import trainable_parameters  # noqa: E402
from sde_diffusion.latents import load_codec  # noqa: E402
from sde_diffusion.app.plotting import _tile_images  # noqa: E402
from sde_diffusion.samplers import draw_samples  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0
# sized for about 40 min on one quiet core (the U-Net trains at about 4 steps/s, the autoencoder 5, the latent U-Net 6-7)
STEPS = {"autoencoder": 2000, "base": 1500, "finetune": 300}
QUICK_STEPS = {"autoencoder": 60, "base": 60, "finetune": 20}
BUDGET_SECONDS, QUICK_BUDGET_SECONDS = 300.0, 20.0
UNREACHABLE_STEPS = 10**7  # train.steps of the time-budgeted runs
NLL_POINTS, QUICK_NLL_POINTS = None, 20
PER_CLASS_A, QUICK_PER_CLASS_A = 20, 3
TIMING_SAMPLES, TIMING_REPEATS, QUICK_TIMING_REPEATS = 100, 3, 1
N_NINES, QUICK_N_NINES = 50, 10
OTHERS_PER_CLASS, QUICK_OTHERS_PER_CLASS = 10, 2
QUICK_PRIOR_SAMPLES = 20
SHOTS = (5, 10)
NEW_CLASS = 9
N_CLASSES = 10
CFG_W = 1.0
SAMPLER_STEPS, SAMPLER_EPS = 50, 1e-3
FIGURE_COLS = 10
BASE_OVERRIDES = ["experiment=digits", "data=digits_few", "data.classes=[0,1,2,3,4,5,6,7,8]", "data.per_class=null",
                  "model.net.n_classes=auto"]  # fmt: skip
FINETUNE_OVERRIDES = [
    "experiment=digits",
    "data=digits_few",
    f"data.classes=[{NEW_CLASS}]",
    "sampler=dpm_solver",
    "sampler.grid.n_steps=50",
    "train.label_dropout=0",  # the null label (classifier-free guidance's unconditional score) stays the base model's
    "train.warmup_steps=30",
]
METHODS = {
    "LoRA r=1": ["finetune=lora", "finetune.rank=1"],
    "LoRA r=4": ["finetune=lora", "finetune.rank=4"],
    "LoRA r=16": ["finetune=lora", "finetune.rank=16"],
    "embedding": ["finetune=embedding", "train.lr=5e-3"],  # textual inversion's usual rate, 10x: a lone row moves <= lr per step
    "full, no prior preservation": ["finetune=full", "finetune.prior_preservation=0"],
    "full + prior preservation": ["finetune=full", "finetune.prior_preservation=1"],
}
PP_ON, PP_OFF = "full + prior preservation", "full, no prior preservation"


def _config(overrides: list[str], steps: int, quick: bool):
    overrides = [*overrides, "device=cpu", "train.progress=false", f"train.steps={steps}"]
    if quick:
        overrides += ["train.warmup_steps=10", "train.ema_decay=0.99"]
    with initialize_config_module("sde_diffusion.conf", version_base=None):
        return compose("config", overrides=overrides)


# ------------------------------------------------------------------------------------- training
def train(cfg, log, name: str, *, run_dir: Path | None = None, budget: float | None = None) -> tuple:
    """Build the experiment and train it with the Trainer (as sde-train does: prior-preservation samples
    first, when asked for); with ``run_dir`` write the run as sde-train does (``.hydra/config.yaml`` and
    ``checkpoints/last.pt``, so that ``load_run`` reads it); with ``budget`` stop after the first step
    past ``budget`` seconds of training."""
    exp = build_experiment(cfg)
    data = exp.data
    labels = data.train_labels if getattr(exp.score_model, "n_classes", None) is not None else None
    train_data, row_weights, prior = data.train, None, {}
    if exp.finetune is not None and exp.finetune.prior_preservation > 0:
        train_data, labels, row_weights, prior = with_prior_samples(exp, train_data, labels, SEED)
    config = None
    if run_dir is not None:
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what load_run reads
        config = OmegaConf.to_container(cfg, resolve=True)
    trainer = sd.Trainer(
        exp.score_model, exp.sde, train_data, exp.options, loss_fn=exp.loss_fn, seed=SEED, labels=labels, run_dir=run_dir,
        config=config, optimizer=exp.optimizer, lr_schedule=exp.lr_schedule, conditioner=exp.conditioner, row_weights=row_weights,
    )  # fmt: skip
    if budget is not None:
        deadline = time.perf_counter() + budget

        def stop_at_deadline(tr) -> None:
            if time.perf_counter() >= deadline:
                tr.options.steps = tr.step  # fit's loop ends after this step

        trainer.on_step.append(stop_at_deadline)
    result = trainer.fit()
    model = trainer.ema_model.eval()
    info = {"steps": result.steps, "seconds": result.seconds, "steps_per_sec": result.steps_per_sec, "last_loss": result.last_loss,
            "batch_size": exp.options.batch_size, "lr": exp.options.lr, "warmup_steps": exp.options.warmup_steps,
            "ema_decay": exp.options.ema_decay, "label_dropout": exp.options.label_dropout,
            "parameters": sum(p.numel() for p in model.parameters()), "training_rows": int(train_data.shape[0]), **prior}  # fmt: skip
    log(f"{name}: {result.steps} steps in {result.seconds:.0f} s ({result.steps_per_sec:.2f} steps/s), last loss {result.last_loss:.4f}, "
        f"{info['parameters']:,} parameters")  # fmt: skip
    return exp, trainer, result, info


# ------------------------------------------------------------------------------------- metrics
@torch.no_grad()
def draw(model, sde, labels: torch.Tensor, data_shape, codec=None) -> tuple[torch.Tensor, float, bool]:
    """Samples of ``labels`` (one batch, prior noise seeded SEED, CFG w = CFG_W), decoded by ``codec``
    when given, clamped to [-1, 1]; the seconds (decoding included) and whether all were finite."""
    grid = functools.partial(sd.log_snr_time_grid, n_steps=SAMPLER_STEPS, eps=SAMPLER_EPS)
    start = time.perf_counter()
    drawn = draw_samples(sde, sd.GuidedScore(model, labels, CFG_W), sd.dpm_solver_pp, grid, data_shape, len(labels),
                         batch_size=len(labels), seed=SEED)  # fmt: skip
    x = drawn.samples if codec is None else codec.decode(drawn.samples)
    seconds = time.perf_counter() - start
    finite = bool(torch.isfinite(x).all())
    return x.nan_to_num(0.0).clamp(-1.0, 1.0), seconds, finite


def correct(clf: LogisticRegression, x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per sample: does the clean classifier predict the label asked for? ``(n,)`` bool."""
    return clf.predict(_flat(x)) == labels.numpy()


def acc_row(hits: np.ndarray) -> dict:
    p = float(hits.mean())
    return {"accuracy": p, "accuracy_stderr": math.sqrt(p * (1 - p) / len(hits)), "n": len(hits)}


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """mean(a - b) over paired per-sample 0/1 outcomes and the s.e. of that mean."""
    d = a.astype(float) - b.astype(float)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0


def file_bytes(state: dict, path: Path) -> int:
    torch.save(state, path)
    return path.stat().st_size


# ------------------------------------------------------------------------------ A. pixel vs latent
def part_a(steps: dict, budget: float, quick: bool, log, runs: Path, clf, per_class: int, nll_points, repeats: int) -> dict:
    ae_dir = runs / "autoencoder"
    ae_overrides = ["train_task=autoencoder", "data=digits"]
    cfg_ae = _config(ae_overrides, steps["autoencoder"], quick)
    aexp, atrainer, aresult, ainfo = train(cfg_ae, log, "autoencoder (task=autoencoder data=digits)", run_dir=ae_dir)
    ae_summary = AutoencoderTask().summarize(  # sde-train's: VAE bound, latents.json
        Finished(aexp, atrainer, aresult, ae_dir, torch.get_num_threads(), int(cfg_ae.seed), int(cfg_ae.n_samples), "none", "autoencoder")
    )
    codec, images = load_codec(ae_dir, "cpu")

    models = {}
    pixel_overrides = ["experiment=digits"]
    latent_overrides = ["experiment=latent_digits", f"autoencoder_dir={ae_dir}"]
    for name, overrides in (("pixel", pixel_overrides), ("latent", latent_overrides)):
        cfg = _config(overrides, UNREACHABLE_STEPS, quick)
        exp, trainer, _, info = train(cfg, log, f"{name} model ({' '.join(overrides[:1])}), {budget:.0f} s budget", budget=budget)
        models[name] = (exp, trainer.ema_model.eval(), {"overrides": overrides, **info})
    pexp, pmodel, _ = models["pixel"]
    lexp, lmodel, _ = models["latent"]
    data = pexp.data
    if not torch.equal(images.test, data.test):
        raise SystemExit("the autoencoder's held-out digits differ from the pixel model's")

    rows, samples = {}, {}
    labels = torch.arange(N_CLASSES).repeat_interleave(per_class)
    timing_labels = torch.arange(N_CLASSES).repeat_interleave(TIMING_SAMPLES // N_CLASSES)
    for name, (exp, model, info) in models.items():
        c = codec if name == "latent" else None
        if name == "pixel":
            nll = sd.evaluate_nll(exp.sde, model, data.test, levels=data.levels, interval_width=data.interval_width, n_points=nll_points,
                                  seed=SEED)  # fmt: skip
        else:
            nll = sd.evaluate_nll(exp.sde, model, images.test, levels=images.levels, interval_width=images.interval_width, n_points=nll_points,
                                  seed=SEED, bound="latent", codec=codec)  # fmt: skip
        log(f"  {name}: held-out {nll['bpd']:.4f} ± {nll['bpd_stderr']:.4f} bits/dim ({nll['bound']}, {nll['n_points']} digits, "
            f"{nll['nfe']:.0f} NFE, {nll['seconds']:.0f} s)")  # fmt: skip
        times = [draw(model, exp.sde, timing_labels, exp.data.data_shape, c)[1] for _ in range(repeats)]
        x, seconds, finite = draw(model, exp.sde, labels, exp.data.data_shape, c)
        hits = correct(clf, x, labels)
        per_label = {str(k): float(hits[labels.numpy() == k].mean()) for k in range(N_CLASSES)}
        rows[name] = {"training": info, "nll": nll, "sample_seconds_per_100": float(np.median(times)), "sample_seconds_all": times,
                      **acc_row(hits), "per_label_accuracy": per_label, "finite": finite, "_hits": hits}  # fmt: skip
        samples[name] = x
        log(f"  {name}: {float(np.median(times)):.2f} s per {TIMING_SAMPLES} samples; accuracy {_acc(rows[name])} on {len(labels)} "
            f"samples{'' if finite else ' (NON-FINITE samples)'}")  # fmt: skip
    d = rows["pixel"]["accuracy"] - rows["latent"]["accuracy"]
    se = math.hypot(rows["pixel"]["accuracy_stderr"], rows["latent"]["accuracy_stderr"])
    for r in rows.values():
        r.pop("_hits")
    ae = {"overrides": ae_overrides, **ainfo, **{k: ae_summary[k] for k in (
        "latent_shape", "scale_factor", "held_out_reconstruction_nats_per_dim", "held_out_kl_nats_per_dim",
        "held_out_reconstruction_rmse", "held_out_vae_bound_bpd", "held_out_vae_bound_bpd_stderr")}}  # fmt: skip
    return {"autoencoder": ae, "models": rows, "pixel_minus_latent_accuracy": d, "pixel_minus_latent_stderr": se,
            "budget_seconds": budget, "per_class": per_class, "_samples": samples, "_labels": labels}  # fmt: skip


# ----------------------------------------------------------------------------- B. a new class
def evaluate_model(model, sde, data_shape, clf, nines: torch.Tensor, others: torch.Tensor) -> dict:
    x9, s9, f9 = draw(model, sde, nines, data_shape)
    xo, so, fo = draw(model, sde, others, data_shape)
    return {"nines": correct(clf, x9, nines), "others": correct(clf, xo, others), "x9": x9, "xo": xo, "seconds": s9 + so,
            "finite": f9 and fo}  # fmt: skip


def part_b(steps: dict, quick: bool, log, runs: Path, clf, n_nines: int, others_per_class: int) -> dict:
    base_dir = runs / "base_no9"
    _, btrainer, _, binfo = train(_config(BASE_OVERRIDES, steps["base"], quick), log, "base model without the nines", run_dir=base_dir)
    base_run = sd.load_run(base_dir, "cpu")  # what fine-tuning starts from
    base = base_run.score_model
    shape = base_run.data.data_shape
    nines = torch.full((n_nines,), NEW_CLASS)
    others = torch.arange(NEW_CLASS).repeat_interleave(others_per_class)
    before = evaluate_model(base, base_run.sde, shape, clf, nines, others)  # label 9 is the base model's null label
    base_bytes = file_bytes(base.state_dict(), base_dir / "ema.pt")
    real = {}
    log(f"  base: classes 0..8 accuracy {_acc(acc_row(before['others']))}; label 9 (its null label) read as 9: "
        f"{_acc(acc_row(before['nines']))}; EMA weights {base_bytes:,} bytes")  # fmt: skip

    runs_out: dict = {}
    images: dict = {}
    for k in SHOTS:
        runs_out[str(k)] = {}
        for method, extra in METHODS.items():
            overrides = [f"init_from={base_dir}", *FINETUNE_OVERRIDES, f"data.per_class={k}", *extra]
            if quick:
                overrides.append(f"finetune.prior_samples={QUICK_PRIOR_SAMPLES}")
            run_dir = runs / f"ft_{k}_{method.replace(' ', '_').replace(',', '').replace('+', 'pp').replace('=', '')}"
            exp, trainer, result, info = train(_config(overrides, steps["finetune"], quick), log, f"{k} nines, {method}", run_dir=run_dir)
            real[k] = exp.data.train
            summary = _finetune_summary(exp, trainer, run_dir, {})  # sde-train's: trainable parameters, adapters.pt
            assert summary["trainable_parameters"] == trainable_parameters(trainer.model)
            model = trainer.ema_model.eval()
            if "adapters_bytes" in summary:
                kept, size = "adapters.pt", summary["adapters_bytes"]
            else:
                kept, size = "EMA weights", file_bytes(model.state_dict(), run_dir / "ema.pt")
            after = evaluate_model(model, exp.sde, shape, clf, nines, others)
            d_others, se_others = paired(after["others"], before["others"])
            minutes = (result.seconds + info.get("prior_seconds", 0.0)) / 60
            row = {
                "overrides": overrides, "finetune": summary["finetune"], "trainable_parameters": summary["trainable_parameters"],
                "file": kept, "file_bytes": size,
                "minutes": minutes, "training": info,
                "nines": acc_row(after["nines"]), "others_before": acc_row(before["others"]), "others_after": acc_row(after["others"]),
                "others_change": d_others, "others_change_stderr": se_others,
                "others_change_verdict": _verdict(d_others, se_others, up="improved", down="degraded"),
                "others_after_per_class": {str(c): float(after["others"][others.numpy() == c].mean()) for c in range(NEW_CLASS)},
                "finite": after["finite"], "sample_seconds": after["seconds"],
                "_hits": after,
            }  # fmt: skip
            runs_out[str(k)][method] = row
            images[(k, method)] = (after["x9"], after["xo"])
            log(f"  {k} nines, {method}: nines {_acc(row['nines'])}; classes 0..8 {row['others_before']['accuracy']:.3f} → "
                f"{row['others_after']['accuracy']:.3f} ({d_others:+.3f} ± {se_others:.3f}); {row['trainable_parameters']:,} trainable, "
                f"{kept} {size:,} bytes, {minutes:.2f} min{'' if after['finite'] else ' (NON-FINITE samples)'}")  # fmt: skip
    return {"base": {"overrides": BASE_OVERRIDES, **binfo, "ema_bytes": base_bytes, "others": acc_row(before["others"]),
                     "label9_null": acc_row(before["nines"])},
            "runs": runs_out, "_before": before, "_images": images, "_real": real, "_others": others}  # fmt: skip


def finetune_findings(b: dict, pixel9: dict | None) -> tuple[list[str], dict]:
    lines, summary = [], {}
    for k in SHOTS:
        rows = b["runs"][str(k)]
        best = max(rows, key=lambda m: rows[m]["nines"]["accuracy"])
        hits = {m: r["_hits"]["nines"] for m, r in rows.items()}
        ties = []
        comparisons = {}
        for m in rows:
            if m == best:
                continue
            d, se = paired(hits[best], hits[m])
            comparisons[m] = {"best_minus": d, "stderr": se, "verdict": _verdict(d, se, up="best ahead", down="best behind")}
            if comparisons[m]["verdict"] != "best ahead":
                ties.append(m)
        group = [best, *ties]
        cheapest = min(group, key=lambda m: (rows[m]["file_bytes"], rows[m]["trainable_parameters"]))
        summary[str(k)] = {"best": best, "best_accuracy": rows[best]["nines"]["accuracy"], "not_resolved_from_best": ties,
                           "cheapest_of_those": cheapest, "comparisons": comparisons}  # fmt: skip
        tie_text = (
            "; within 2 paired s.e. of it: " + ", ".join(f"{m} ({_acc(rows[m]['nines'])})" for m in ties)
            if ties
            else "; every other method is more than 2 paired s.e. behind"
        )
        lines.append(
            f"- **{k} images: which method teaches the nine best?** **{best}** ({_acc(rows[best]['nines'])} of {rows[best]['nines']['n']} "
            f"generated nines read as 9; {rows[best]['trainable_parameters']:,} trainable parameters, {rows[best]['file']} "
            f"{rows[best]['file_bytes']:,} bytes, {rows[best]['minutes']:.2f} min){tie_text}. The cheapest of these: **{cheapest}** "
            f"({rows[cheapest]['trainable_parameters']:,} parameters, {rows[cheapest]['file_bytes']:,} bytes). Accuracy of the best minus each other "
            "method, paired: "
            + "; ".join(f"{m} ({rows[m]['nines']['accuracy']:.3f}) {c['best_minus']:+.3f} ± {c['stderr']:.3f}" for m, c in comparisons.items())
            + "."
        )  # fmt: skip
    more = {}
    for m in METHODS:
        a, b5 = b["runs"][str(SHOTS[-1])][m]["_hits"]["nines"], b["runs"][str(SHOTS[0])][m]["_hits"]["nines"]
        d, se = paired(a, b5)
        more[m] = {"change": d, "stderr": se, "verdict": _verdict(d, se, up="better", down="worse")}
    summary["more_images"] = more
    lines.append(
        f"- **{SHOTS[-1]} images instead of {SHOTS[0]}** (accuracy on nines, paired over the same prior noise): "
        + "; ".join(f"{m} {v['change']:+.3f} ± {v['stderr']:.3f}: {v['verdict']}" for m, v in more.items())
        + "."
    )
    degr = {}
    for k in SHOTS:
        rows = b["runs"][str(k)]
        degr[str(k)] = {m: {"change": r["others_change"], "stderr": r["others_change_stderr"], "verdict": r["others_change_verdict"]}
                        for m, r in rows.items()}  # fmt: skip
        lines.append(
            f"- **Do the other classes degrade? ({k} images)** Accuracy on classes 0..8 before fine-tuning "
            f"{_acc(b['base']['others'])}; after minus before, paired over the same {b['base']['others']['n']} samples: "
            + "; ".join(f"{m} {v['change']:+.3f} ± {v['stderr']:.3f}: {v['verdict']}" for m, v in degr[str(k)].items())
            + "."
        )
    summary["degradation"] = degr
    pp = {}
    for k in SHOTS:
        on, off = b["runs"][str(k)][PP_ON], b["runs"][str(k)][PP_OFF]
        d, se = paired(on["_hits"]["others"], off["_hits"]["others"])
        d9, se9 = paired(on["_hits"]["nines"], off["_hits"]["nines"])
        pp[str(k)] = {"others_with_minus_without": d, "stderr": se, "verdict": _verdict(d, se, up="yes", down="no (worse)"),
                      "nines_with_minus_without": d9, "nines_stderr": se9}  # fmt: skip
    summary["prior_preservation"] = pp
    lines.append(
        "- **Does prior preservation reduce the degradation of the other classes?** (full fine-tuning, λ = 1 against λ = 0; "
        "accuracy on classes 0..8 after, paired) "
        + "; ".join(
            f"{k} images: {pp[str(k)]['others_with_minus_without']:+.3f} ± {pp[str(k)]['stderr']:.3f} (**{pp[str(k)]['verdict']}**), "
            f"at {pp[str(k)]['nines_with_minus_without']:+.3f} ± {pp[str(k)]['nines_stderr']:.3f} on the nines"
            for k in SHOTS
        )
        + ". LoRA and the embedding run use no prior preservation (their configs' default λ = 0)."
    )
    ref = f"; part A's pixel model, trained on all ten classes, {_acc(pixel9)} on label 9" if pixel9 else ""
    lines.append(
        f"- References: the base model asked for label 9 (its null label, i.e. unconditional samples of 0..8) gives samples read as 9 "
        f"{_acc(b['base']['label9_null'])}{ref}. With {b['base']['label9_null']['n']} samples the s.e. of an accuracy near 0.5 is about "
        f"{0.5 / math.sqrt(b['base']['label9_null']['n']):.2f}; differences "
        "between methods are paired over the same prior noise (the s.e. of the per-sample differences), which is tighter when the "
        "methods agree on the same samples."
    )
    lines.append(
        "- Caveats: the methods share one step count and, but for the embedding (lr 5e-3, textual inversion's usual tenfold rate), "
        "one learning rate (5e-4), not tuned per method; under Adam each parameter moves by at most about lr per step. Fine-tuning "
        "runs without label dropout, so the null label (the unconditional score classifier-free guidance subtracts) stays the base "
        "model's in every mode."
    )
    pp_rows = {k: b["runs"][str(k)][PP_ON]["training"] for k in SHOTS}
    lines.append(
        "- Prior preservation as sde-train does it: each batch draws its rows uniformly from the new images and the prior samples "
        "(weights 1 and λ k / n_prior, sde_diffusion.finetune.prior_weights), so a batch of "
        f"{pp_rows[SHOTS[0]]['batch_size']} holds on average "
        + ", ".join(f"{t['batch_size'] * k / t['training_rows']:.1f} new images (k = {k})" for k, t in pp_rows.items())
        + "; the expected loss is DreamBooth's, but the new images' gradient comes from few rows per step (DreamBooth pairs each "
        "new image with a prior sample in every batch)."
    )
    return lines, summary


# ---------------------------------------------------------------------------------------- figures
def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x[:n]``, padded with NaN images (drawn blank) to ``n``."""
    x = x[:n]
    if x.shape[0] < n:
        x = torch.cat([x, torch.full((n - x.shape[0], *x.shape[1:]), float("nan"))])
    return x


def row_figure(rows: list[tuple[str, torch.Tensor]], n_cols: int, ax, title: str) -> None:
    """One tile per row of ``rows`` (``(label, (n, C, H, W))``, padded to ``n_cols``), labelled on the left."""
    images = torch.cat([_pad(x, n_cols) for _, x in rows])
    h = images.shape[-2] + 1
    ax.imshow(_tile_images(images, n_cols, (-1.0, 1.0))[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([1 + h * i + (h - 1) / 2 for i in range(len(rows))], [label for label, _ in rows], fontsize=8)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=9)


def latent_figure(a: dict, path: Path, title: str) -> None:
    labels = a["_labels"]
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 6.0))
    for ax, name in zip(axes, ("pixel", "latent"), strict=True):
        x = a["_samples"][name]
        rows = [(f"label {c}", x[labels == c]) for c in range(N_CLASSES)]
        r = a["models"][name]
        row_figure(rows, min(FIGURE_COLS, a["per_class"]), ax, f"{name} model: accuracy {_acc(r)}, {r['nll']['bpd']:.3f} bits/dim")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def finetune_figure(b: dict, path: Path, title: str) -> None:
    before, others = b["_before"], b["_others"]
    first = torch.stack([torch.nonzero(others == c)[0, 0] for c in range(NEW_CLASS)])
    fig, axes = plt.subplots(
        2, len(SHOTS), figsize=(6.0 * len(SHOTS), 9.0), gridspec_kw={"height_ratios": [len(METHODS) + 2, len(METHODS) + 1]}
    )
    for j, k in enumerate(SHOTS):
        rows9 = [(f"the {k} real nines", b["_real"][k]), ("base, label 9 (null)", before["x9"])]
        rows9 += [(m, b["_images"][(k, m)][0]) for m in METHODS]
        row_figure(rows9, FIGURE_COLS, axes[0, j], f"{k} images: generated nines (label 9, CFG w = {CFG_W:g})")
        rows_o = [("base (before)", before["xo"][first])] + [(m, b["_images"][(k, m)][1][first]) for m in METHODS]
        row_figure(rows_o, NEW_CLASS, axes[1, j], f"{k} images: classes 0..8 after fine-tuning (one sample each)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------------ text
def _bpd(n: dict) -> str:
    return f"{n['bpd']:.3f} ± {n['bpd_stderr']:.3f}" if n["bpd_stderr"] is not None else f"{n['bpd']:.3f}"


def _strip(x):
    """The results without the private ``_`` entries (images, per-sample outcomes)."""
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if not (isinstance(k, str) and k.startswith("_"))}
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (a few minutes): tiny steps, fewer samples and digits")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training, sampling and evaluation")
    parser.add_argument("--runs", type=Path, default=None, help="keep the run directories here (default: a temporary directory)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    steps = QUICK_STEPS if args.quick else STEPS
    budget = QUICK_BUDGET_SECONDS if args.quick else BUDGET_SECONDS
    nll_points = QUICK_NLL_POINTS if args.quick else NLL_POINTS
    per_class_a = QUICK_PER_CLASS_A if args.quick else PER_CLASS_A
    repeats = QUICK_TIMING_REPEATS if args.quick else TIMING_REPEATS
    n_nines = QUICK_N_NINES if args.quick else N_NINES
    others_per_class = QUICK_OTHERS_PER_CLASS if args.quick else OTHERS_PER_CLASS
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    with initialize_config_module("sde_diffusion.conf", version_base=None):
        digits = build_experiment(compose("config", overrides=["experiment=digits", "device=cpu"])).data
    clf, clf_acc = clean_classifier(digits)
    log(f"clean classifier (logistic regression on the clean training digits, all ten classes): held-out accuracy {clf_acc:.4f}")

    with tempfile.TemporaryDirectory(prefix="finetune_runs_") as tmp:
        runs = (args.runs or Path(tmp)).resolve()
        runs.mkdir(parents=True, exist_ok=True)
        a = part_a(steps, budget, args.quick, log, runs, clf, per_class_a, nll_points, repeats)
        b = part_b(steps, args.quick, log, runs, clf, n_nines, others_per_class)
    pixel9 = {"accuracy": a["models"]["pixel"]["per_label_accuracy"][str(NEW_CLASS)], "n": per_class_a}
    pixel9["accuracy_stderr"] = math.sqrt(pixel9["accuracy"] * (1 - pixel9["accuracy"]) / per_class_a)
    f_lines, f_summary = finetune_findings(b, pixel9)
    wall = time.perf_counter() - start

    # ------------------------------------------------------------------------------------ A findings
    pm, lm, ae = a["models"]["pixel"], a["models"]["latent"], a["autoencoder"]
    d_bpd = pm["nll"]["bpd"] - lm["nll"]["bpd"]
    se_bpd = math.hypot(pm["nll"]["bpd_stderr"] or 0.0, lm["nll"]["bpd_stderr"] or 0.0)
    bpd_verdict = _verdict(d_bpd, se_bpd, up="the latent model lower", down="the pixel model lower")
    acc_verdict = _verdict(a["pixel_minus_latent_accuracy"], a["pixel_minus_latent_stderr"], up="pixel higher", down="latent higher")
    speed = pm["sample_seconds_per_100"] / lm["sample_seconds_per_100"]
    a_summary = {"bpd_pixel_minus_latent": d_bpd, "bpd_stderr": se_bpd, "bpd_verdict": bpd_verdict,
                 "accuracy_pixel_minus_latent": a["pixel_minus_latent_accuracy"], "accuracy_stderr": a["pixel_minus_latent_stderr"],
                 "accuracy_verdict": acc_verdict, "sampling_speedup_latent": speed}  # fmt: skip
    terms = lm["nll"]["terms_nats_per_dim"]
    a_lines = [
        f"- **Bits/dim at equal training time** ({budget:.0f} s each: the pixel model {pm['training']['steps']} steps, the latent model "
        f"{lm['training']['steps']} steps; the autoencoder's {ae['seconds']:.0f} s not counted): pixel {_bpd(pm['nll'])} (probability-flow "
        f"ODE, dequantized), latent {_bpd(lm['nll'])} (LSGM bound); pixel minus latent {d_bpd:+.3f} ± {se_bpd:.3f}: **{bpd_verdict}**. Both "
        f"are upper bounds on the digits' discrete NLL. The latent bound's parts per pixel (nats): -log p(x|z) {terms['reconstruction']:.3f}, "
        f"log q(z|x) {terms['log_q']:.3f}, -log p(z) {terms['prior_nll']:.3f}; the autoencoder's own VAE bound (N(0, I) prior) "
        f"{ae['held_out_vae_bound_bpd']:.3f} bits/dim: the diffusion prior in place of N(0, I) changes the bound by "
        f"{lm['nll']['bpd'] - ae['held_out_vae_bound_bpd']:+.3f} bits/dim.",
        f"- **Class accuracy** (CFG w = {CFG_W:g}, {a['per_class']} per label): pixel {_acc(pm)}, latent {_acc(lm)}; pixel minus latent "
        f"{a['pixel_minus_latent_accuracy']:+.3f} ± {a['pixel_minus_latent_stderr']:.3f}: **{acc_verdict}**.",
        f"- **Sampling time** per {TIMING_SAMPLES} samples ({SAMPLER_STEPS} DPM-Solver++(2M) steps, CFG doubles each network call): pixel "
        f"{pm['sample_seconds_per_100']:.2f} s, latent {lm['sample_seconds_per_100']:.2f} s with decoding: the latent model samples "
        f"{speed:.2f}x as fast (4x4 latents against 8x8 pixels, and its U-Net has two levels instead of three). Training speed: "
        f"{pm['training']['steps_per_sec']:.2f} against {lm['training']['steps_per_sec']:.2f} steps/s.",
    ]

    # ------------------------------------------------------------------------------------ output
    out = {
        "quick": args.quick,
        "platform": {"torch": torch.__version__, "python": sys.version.split()[0], "sklearn": sklearn.__version__,
                     "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                     "threads": torch.get_num_threads()},  # fmt: skip
        "seed": SEED,
        "steps": steps,
        "sampling": {"sampler": f"dpm_solver_pp (2M) on log_snr_time_grid(sde, {SAMPLER_STEPS}, {SAMPLER_EPS:g})", "cfg_w": CFG_W,
                     "seed": SEED, "clamp": [-1.0, 1.0]},  # fmt: skip
        "clean_classifier": {"model": "LogisticRegression(max_iter=2000) on the 64 pixels, all ten classes", "held_out_accuracy": clf_acc},
        "latent_vs_pixel": _strip(a),
        "finetune": _strip(b),
        "findings": {"latent_vs_pixel": a_summary, "finetune": f_summary},
        "wall_seconds": wall,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / ("finetune_quick" if args.quick else "finetune")
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    latent_png = stem.parent / f"{stem.name}_latent.png"
    latent_figure(a, latent_png, f"samples of each label (rows), CFG w = {CFG_W:g}, DPM-Solver++(2M) {SAMPLER_STEPS} steps, the same prior "
                  f"noise per model; {budget:.0f} s of training each")  # fmt: skip
    finetune_figure(b, stem.with_suffix(".png"), f"a model trained without nines, taught the nine; {steps['finetune']} fine-tuning steps, "
                    f"the same prior noise in every row")  # fmt: skip

    def shown(overrides: list[str]) -> str:  # the temporary run directories as placeholders
        names = {"autoencoder_dir": "<autoencoder run dir>", "init_from": "<base run dir>"}
        return " ".join(f"{o.split('=', 1)[0]}={names[o.split('=', 1)[0]]}" if o.split("=", 1)[0] in names else o for o in overrides)

    def train_row(name, t):
        return (f"| {name} | `{shown(t['overrides'])}` | {t['steps']} | {t['batch_size']} | {t['lr']:g} | {t['seconds']:.0f} | "
                f"{t['steps_per_sec']:.2f} | {t['last_loss']:.4f} | {t['parameters']:,} |")  # fmt: skip

    base = b["base"]
    lines = [
        "# Latent diffusion and fine-tuning on the digits",
        "",
        f"Torch {torch.__version__}, {torch.get_num_threads()} thread(s), seed {SEED}; EMA weights. Whole run {wall / 60:.1f} min. Samples: "
        f"{out['sampling']['sampler']}, CFG w = {CFG_W:g}, clamped to [-1, 1], judged by a clean-data logistic regression on all ten "
        f"classes (held-out accuracy **{clf_acc:.3f}**); accuracy ± binomial s.e.",
        "",
        "| model | overrides | steps | batch | lr | training (s) | steps/s | last loss | parameters |",
        "|---|---|---|---|---|---|---|---|---|",
        train_row("autoencoder", ae),
        train_row("pixel model", pm["training"]),
        train_row("latent model", lm["training"]),
        train_row("base model without nines", base),
        "",
        "## A. Pixel vs latent diffusion at equal training time",
        "",
        f"Training budget {budget:.0f} s each (stopped after the first step past it); the autoencoder ({ae['steps']} steps, "
        f"{ae['seconds']:.0f} s) is counted apart. Bits/dim of {pm['nll']['n_points']} held-out digits under the unconditional model: "
        f"pixel by the probability-flow ODE ({pm['nll']['divergence']} divergence, dequantized), latent by LSGM's bound (one latent draw "
        f"per digit, the prior's log-density by the ODE). Latents {tuple(ae['latent_shape'])}, scale factor {ae['scale_factor']:.3f}; "
        f"autoencoder reconstruction RMSE {ae['held_out_reconstruction_rmse']:.4f}, VAE bound {ae['held_out_vae_bound_bpd']:.3f} ± "
        f"{ae['held_out_vae_bound_bpd_stderr']:.3f} bits/dim.",
        "",
        f"| model | steps | bits/dim | bound | NFE (NLL) | NLL seconds | s per {TIMING_SAMPLES} samples | accuracy ({a['per_class']} per label) |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {r['training']['steps']} | {_bpd(r['nll'])} | {r['nll']['bound']} | {r['nll']['nfe']:.0f} | {r['nll']['seconds']:.0f} | "
            f"{r['sample_seconds_per_100']:.2f} | {_acc(r)} |"
            for name, r in a["models"].items()
        ],  # fmt: skip
        "",
        f"![samples of the pixel and the latent model]({latent_png.name})",
        "",
        "## B. Teaching the nine to a model that never saw one",
        "",
        f"Base model: {base['steps']} steps on the {base['training_rows']} training digits of classes 0..8; its EMA weights "
        f"{base['ema_bytes']:,} bytes; classes 0..8 accuracy {_acc(base['others'])} ({base['others']['n']} samples); asked for label 9 "
        f"(its null label) it gives samples read as 9 {_acc(base['label9_null'])}. Each fine-tuning run: {steps['finetune']} steps, "
        f"{n_nines} generated nines, classes 0..8 with {base['others']['n'] // NEW_CLASS} samples "
        "each before (base) and after; change = after - before, paired over the same samples. Minutes: training (plus drawing the "
        "prior samples for prior preservation). File: what the run adds (LoRA and embedding: sde-train's adapters.pt; full: the EMA "
        f"weights). Overrides: `{shown(['init_from=', *FINETUNE_OVERRIDES])} data.per_class=k` and, per method, "
        + ", ".join(f"{m} `{' '.join(v)}`" for m, v in METHODS.items())
        + ".",
        "",
    ]
    for k in SHOTS:
        lines += [
            f"**{k} images of the nine**",
            "",
            "| method | trainable parameters | file | bytes | minutes | nines accuracy | classes 0..8 after | change (paired) | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
            *[
                f"| {m} | {r['trainable_parameters']:,} | {r['file']} | {r['file_bytes']:,} | {r['minutes']:.2f} | {_acc(r['nines'])} | "
                f"{_acc(r['others_after'])} | {r['others_change']:+.3f} ± {r['others_change_stderr']:.3f} | {r['others_change_verdict']} |"
                + ("" if r["finite"] else " non-finite samples (set to 0)")
                for m, r in b["runs"][str(k)].items()
            ],  # fmt: skip
            "",
        ]
    lines += [
        f"![generated nines and classes 0..8 after fine-tuning]({stem.name}.png)",
        "",
        "## Findings",
        "",
        *a_lines,
        *f_lines,
        "",
    ]
    if args.quick:
        lines.insert(2, "**Quick smoke run** (tiny steps, few samples): the numbers say nothing about the methods.\n")
    stem.with_suffix(".md").write_text("\n".join(lines))
    log(f"wrote {stem}.{{json,md,png}} and {latent_png.name}; wall time {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
