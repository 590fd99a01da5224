"""Guidance and cold diffusion on the digits: class accuracy and diversity against the guidance scale
for classifier guidance, classifier-free guidance and both; cold diffusion's Alg. 1 against Alg. 2.

Everything is trained with the Trainer on the 1,500 training digits (17 grey levels on [-1, 1), left
bin edges; seed SEED) and judged on the 297 held-out digits. Step counts: STEPS, i.e. 1500 for the
score model and the classifier and 1000 for each cold restorer (sized so that the whole run takes
about 25 minutes on one busy-ish core; --quick: QUICK_STEPS each, with warm-up 50 and EMA 0.99); the
EMA weights are evaluated.

A. Guidance (VP SDE of the default config, beta 0.1..20):

  - score model: ``experiment=digits`` (class-conditional U-Net, eps loss, label dropout 0.1, so the
    null label 10 gives the unconditional score);
  - noisy-data classifier p(y | x_t, t): ``train_task=classifier data=digits model=classifier_unet``
    (``sde-train task=classifier ...``: the U-Net's encoder and middle, average pooling; cross-entropy
    on x_t of the same VP SDE, t ~ U(1e-5, 1), the task's defaults: batch 256, lr 1e-3, warm-up 500
    (--quick 50), no label dropout); its held-out
    accuracy at each time of sde_diffusion.losses.classification.NOISE_LEVELS by ``noisy_accuracy``
    (one draw of x_t per held-out digit and time, seed SEED);
  - sampling: PER_CLASS samples of each label 0..9 (--quick QUICK_PER_CLASS) by DPM-Solver++(2M)
    (``sd.dpm_solver_pp``, deterministic) on ``sd.log_snr_time_grid(sde, SAMPLER_STEPS, 1e-3)``, the
    same prior noise for every row (``draw_samples``, seed SEED), one batch per row, for
      * classifier-free guidance ``GuidedScore(model, labels, w)``, w in CFG_SCALES
        (``(1 + w) s(x, t, y) - w s(x, t, null)``; w = 0 is the conditional model);
      * classifier guidance on the unconditional (null-label) score,
        ``ClassifierGuidedScore(GuidedScore(model, 10, 0), classifier, labels, s)``, s in CLS_SCALES
        (``s_null(x, t) + s grad_x log p(y | x_t, t)``; s = 0 is the unconditional model);
      * both: ``ClassifierGuidedScore(GuidedScore(model, labels, 1), classifier, labels, s)``, s in BOTH_SCALES;
  - metrics on the samples clamped to [-1, 1]:
      * class accuracy: the fraction that a separate clean-data classifier (scikit-learn
        LogisticRegression(max_iter=2000) on the 64 pixels of the clean training digits, as in
        benchmarks/ddpm.py; its own held-out accuracy is reported) assigns to the label asked for,
        +- the binomial standard error sqrt(p (1 - p) / n). The rows share their prior noise, so
        differences between rows are paired; the s.e. of a difference quoted in the findings is that
        of independent estimates (conservative);
      * diversity: the mean Euclidean distance (64 pixels, data units) between two samples of the
        same label, averaged over the 10 labels; the same statistic for the held-out digits of each
        class is the reference (a mean over pairs does not depend on the number of samples);
      * sliced W2 (sd.sliced_wasserstein, 256 directions seeded SW2_SEED) between the samples and a
        class-balanced held-out subset of the same size (the first PER_CLASS held-out digits of each
        class); the floor is the mean over SW2_SUBSETS class-balanced random subsets of the training
        digits against the same held-out subset;
      * seconds of the sampling (one batch, one thread).

B. Cold diffusion (Bansal et al. 2022), ``experiment=digits_cold degradation=blur`` and
   ``degradation=mask`` (a U-Net restorer R(x_t, t) ~ x_0 trained by sd.RestorationLoss, L1, t ~ U(0, 1]),
   each trained for the same number of steps, then with ``sd.cold_sample(restorer, degradation, x,
   n_steps=cold.steps (20), algorithm="naive" (Alg. 1) | "improved" (Alg. 2), t_start=t)``:
  - restoration of the 297 held-out digits degraded to t in T_STARTS: MSE per pixel (mean over digits
    +- its s.e.) and PSNR = 10 log10(peak^2 / MSE) with peak = max - min of the held-out digits (as
    sde-train's summary), beside two references: the degraded input itself and one direct restorer
    call R(D(x_0, t), t); the paired differences MSE(Alg. 2) - MSE(Alg. 1) and MSE(Alg. 2) - MSE(direct)
    +- their s.e. over digits; where every digit gives the same output (the mask at t = 1: D(x_0, 1) = 0
    for all), the findings say that the comparison is one image against another;
  - generation: COLD_SAMPLES samples (--quick QUICK_COLD_SAMPLES) from D(x_0, 1) of random training
    digits plus N(0, cold.noise^2) noise (cold.noise = 0.05), with both algorithms from the same
    starts: sliced W2 to the held-out digits (mean over SW2_SUBSETS random held-out subsets of the
    sample size; floor: random training subsets; the difference Alg. 2 - Alg. 1 paired over the
    subsets, with its sd over them), diversity (mean pairwise distance of all samples;
    held-out reference), and, as a sharpness proxy, the clean classifier's mean max probability and
    mean entropy (nats) of its predicted class probabilities, and the entropy (bits, at most
    log2 10 = 3.32) of the histogram of predicted classes (mode coverage).

C. Super-resolution 4x4 -> 8x8 (SR3-style image conditioning) and a two-stage cascade:

  - two SR models, ``experiment=digits_sr`` with noise-conditioning augmentation (its defaults:
    training levels a ~ U(0, 0.2), sampling level 0.05) and without (``conditioning.max_level=0
    conditioning.sample_level=0``), the same seed and steps; a base model at 4x4
    (``experiment=digits_cascade``: class-conditional on the 2x2 block means of the digits);
  - super-resolution of the 297 held-out digits from their 4x4 versions (one sample each, the SR
    config's DPM-Solver++(2M), 50 steps, clamped to [-1, 1]): PSNR (mean over digits +- s.e.) and
    SSIM (scikit-image's default definition, 7x7 windows) against the truth, beside bicubic
    upsampling; the RMS consistency |A x_sr - low|; and the same from low-resolution inputs with
    N(0, NOISY_LOW^2) noise added (a base model's imperfect output, in miniature); the paired PSNR
    difference (augmentation - none) +- its s.e. over digits;
  - the cascade: PER_CLASS base samples of each label (CFG w = BOTH_CFG) super-resolved by each SR
    model and by bicubic upsampling: the clean classifier's accuracy on the label asked for and the
    sliced W2 to the class-balanced held-out subset of part A (same floor).

Runs on --threads torch threads (default 1). Writes benchmarks/results/guidance.{json,md,png},
guidance_cold.png and guidance_sr.png (guidance.png: one sample per class for a few settings;
guidance_cold.png: inputs, Alg. 1 and Alg. 2 for restoration and generation; guidance_sr.png: low-res,
bicubic, both SR models and the truth, and the cascade); --quick (a smoke run of a few minutes) writes
guidance_quick* instead.

    python benchmarks/guidance.py            # full: about 35 minutes on one core
    python benchmarks/guidance.py --quick
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

import sde_diffusion as sd  # noqa: E402
from sde_diffusion.app.runs import build_experiment  # noqa: E402
from sde_diffusion.losses.classification import NOISE_LEVELS, noisy_accuracy  # noqa: E402
from sde_diffusion.app.plotting import _tile_images, fit_titles  # noqa: E402
from sde_diffusion.samplers import draw_samples  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0
# sized for about 25 min on one thread (measured: 3.4-3.6 steps/s for the U-Nets, 6.7 for the classifier)
STEPS = {"score": 1500, "classifier": 1500, "cold": 1000, "sr": 1500, "base": 1500}
QUICK_STEPS = 100
PER_CLASS, QUICK_PER_CLASS = 20, 5
SAMPLER_STEPS, SAMPLER_EPS = 50, 1e-3
CFG_SCALES = (0.0, 1.0, 2.0, 4.0)
CLS_SCALES = (0.0, 1.0, 2.0, 4.0, 8.0)
BOTH_SCALES = (1.0, 2.0, 4.0)
BOTH_CFG = 1.0
T_STARTS = (0.25, 0.5, 1.0)
COLD_SAMPLES, QUICK_COLD_SAMPLES = 100, 50
DEGRADATIONS = ("blur", "mask")
SW2_SEED, SW2_SUBSETS = 0, 10
N_CLASSES = 10
NOISY_LOW = 0.1
SR_MODELS = {"augmented": [], "no augmentation": ["conditioning.max_level=0", "conditioning.sample_level=0"]}
FIGURE_ROWS = (("cfg", 0.0), ("cfg", 2.0), ("classifier", 0.0), ("classifier", 2.0), ("classifier", 8.0), ("both", 2.0))
METHOD_NAMES = {
    "cfg": "classifier-free, w",
    "classifier": "classifier guidance (unconditional score), s",
    "both": f"both (CFG w = {BOTH_CFG:g}) + classifier, s",
}


def _config(overrides: list[str], steps: int, quick: bool):
    overrides = [*overrides, "device=cpu", "train.progress=false", f"train.steps={steps}"]
    if quick:
        overrides += ["train.warmup_steps=50", "train.ema_decay=0.99"]
    with initialize_config_module("sde_diffusion.conf", version_base=None):
        return compose("config", overrides=overrides)


# ------------------------------------------------------------------------------------- training
def train(cfg, log, name: str) -> tuple:
    exp = build_experiment(cfg)
    data = exp.data
    labels = data.train_labels if getattr(exp.score_model, "n_classes", None) is not None else None
    trainer = sd.Trainer(
        exp.score_model, exp.sde, data.train, exp.options, loss_fn=exp.loss_fn, seed=SEED, labels=labels,
        optimizer=exp.optimizer, lr_schedule=exp.lr_schedule, conditioner=exp.conditioner,
    )  # fmt: skip
    result = trainer.fit()
    model = trainer.ema_model.eval()
    info = {"steps": result.steps, "seconds": result.seconds, "steps_per_sec": result.steps_per_sec, "last_loss": result.last_loss,
            "batch_size": exp.options.batch_size, "lr": exp.options.lr, "warmup_steps": exp.options.warmup_steps,
            "ema_decay": exp.options.ema_decay, "label_dropout": exp.options.label_dropout,
            "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    log(f"{name}: {result.steps} steps in {result.seconds:.0f} s ({result.steps_per_sec:.2f} steps/s), last loss {result.last_loss:.4f}, "
        f"{info['parameters']:,} parameters")  # fmt: skip
    return exp, model, info


# ------------------------------------------------------------------------------------- metrics
def clean_classifier(data) -> tuple[LogisticRegression, float]:
    """Logistic regression on the clean training digits; its accuracy on the held-out digits."""
    clf = LogisticRegression(max_iter=2000)
    clf.fit(data.train.reshape(data.train.shape[0], -1).numpy(), data.train_labels.numpy())
    acc = clf.score(data.test.reshape(data.test.shape[0], -1).numpy(), data.test_labels.numpy())
    return clf, float(acc)


def _flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(x.shape[0], -1).double().numpy()


def mean_pairwise(x: torch.Tensor) -> float:
    """Mean Euclidean distance over all pairs of rows of ``x`` ``(N, *dims)``."""
    return torch.pdist(x.reshape(x.shape[0], -1).double()).mean().item()


def class_diversity(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise distance within each label, averaged over the labels."""
    return float(np.mean([mean_pairwise(x[labels == k]) for k in range(N_CLASSES)]))


def balanced_subset(labels: torch.Tensor, per_class: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Indices of ``per_class`` rows of each label 0..9, label by label: the first ones, or random ones with ``gen``."""
    out = []
    for k in range(N_CLASSES):
        idx = torch.nonzero(labels == k)[:, 0]
        if gen is not None:
            idx = idx[torch.randperm(len(idx), generator=gen)]
        out.append(idx[:per_class])
    return torch.cat(out)


def sw2(a: torch.Tensor, b: torch.Tensor) -> float:
    return sd.sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(SW2_SEED))


def sharpness(clf: LogisticRegression, x: torch.Tensor) -> dict:
    """The clean classifier's mean max probability and mean entropy (nats) on ``x``, and the entropy
    (bits) of the histogram of its predicted classes."""
    p = clf.predict_proba(_flat(x))
    entropy = -(p * np.log(np.clip(p, 1e-300, None))).sum(1)
    counts = np.bincount(p.argmax(1), minlength=N_CLASSES) / len(p)
    nz = counts[counts > 0]
    return {
        "max_prob": float(p.max(1).mean()),
        "entropy_nats": float(entropy.mean()),
        "class_hist_entropy_bits": float(-(nz * np.log2(nz)).sum()),
    }


# ------------------------------------------------------------------------------------- guidance
def guided_scores(model, classifier, labels: torch.Tensor) -> list[tuple[str, float, object]]:
    """``(method, scale, score_fn)`` for every row of part A."""
    null = torch.full_like(labels, model.n_classes)
    rows = [("cfg", w, sd.GuidedScore(model, labels, w)) for w in CFG_SCALES]
    rows += [("classifier", s, sd.ClassifierGuidedScore(sd.GuidedScore(model, null, 0.0), classifier, labels, s)) for s in CLS_SCALES]
    rows += [("both", s, sd.ClassifierGuidedScore(sd.GuidedScore(model, labels, BOTH_CFG), classifier, labels, s)) for s in BOTH_SCALES]
    return rows


def sample_row(sde, score_fn, labels, data_shape, clf, reference) -> tuple[dict, torch.Tensor]:
    sampler = sd.dpm_solver_pp
    grid = functools.partial(sd.log_snr_time_grid, n_steps=SAMPLER_STEPS, eps=SAMPLER_EPS)
    drawn = draw_samples(sde, score_fn, sampler, grid, data_shape, len(labels), batch_size=len(labels), seed=SEED)
    finite = bool(torch.isfinite(drawn.samples).all())
    samples = drawn.samples.nan_to_num(0.0).clamp(-1.0, 1.0)
    pred = torch.as_tensor(clf.predict(_flat(samples)))
    acc = (pred == labels).double().mean().item()
    row = {
        "accuracy": acc, "accuracy_stderr": math.sqrt(acc * (1 - acc) / len(labels)),
        "diversity": class_diversity(samples, labels), "sliced_w2": sw2(samples, reference) if finite else float("nan"),
        "clean_max_prob": sharpness(clf, samples)["max_prob"], "finite": finite, "nfe": drawn.batch_nfe[0], "seconds": drawn.seconds,
    }  # fmt: skip
    return row, samples


# -------------------------------------------------------------------------------- cold diffusion
def cold_restoration(restorer, degradation, test: torch.Tensor, n_steps: int, peak: float) -> dict:
    out = {}
    for t in T_STARTS:
        x_t = degradation(test, t)
        with torch.no_grad():
            direct = restorer(x_t, torch.full((test.shape[0],), t))
        per_image = {"degraded input": x_t, "direct R(x_t, t)": direct}
        seconds = {}
        for algorithm in ("naive", "improved"):
            start = time.perf_counter()
            per_image[algorithm] = sd.cold_sample(restorer, degradation, x_t, n_steps, algorithm=algorithm, t_start=t).samples
            seconds[algorithm] = time.perf_counter() - start
        mse = {k: (v - test).pow(2).reshape(test.shape[0], -1).mean(1).double() for k, v in per_image.items()}
        # the largest over pixels of the outputs' standard deviation over digits: 0 when every digit gives the same image
        spread = {k: v.reshape(test.shape[0], -1).std(0).max().item() for k, v in per_image.items()}
        diff = mse["improved"] - mse["naive"]
        vs_direct = mse["improved"] - mse["direct R(x_t, t)"]
        out[str(t)] = {
            **{k: {"mse": v.mean().item(), "mse_stderr": (v.std() / math.sqrt(len(v))).item(),
                   "psnr": 10 * math.log10(peak**2 / v.mean().item()), "output_spread": spread[k], "seconds": seconds.get(k)}
               for k, v in mse.items()},
            "improved_minus_naive_mse": diff.mean().item(), "improved_minus_naive_stderr": (diff.std() / math.sqrt(len(diff))).item(),
            "improved_minus_direct_mse": vs_direct.mean().item(),
            "improved_minus_direct_stderr": (vs_direct.std() / math.sqrt(len(vs_direct))).item(),
        }  # fmt: skip
        out[str(t)]["_images"] = per_image  # for the figure; popped before the JSON
    return out


def cold_generation(restorer, degradation, data, n: int, n_steps: int, noise: float, clf, ho_refs) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(SEED)
    train = data.train
    start = degradation(train[torch.randint(train.shape[0], (n,), generator=gen)], 1.0)
    start = start + noise * torch.randn(start.shape, generator=gen)
    rows, images = {}, {"start": start}
    for algorithm in ("naive", "improved"):
        t0 = time.perf_counter()
        x = sd.cold_sample(restorer, degradation, start, n_steps, algorithm=algorithm).samples
        seconds = time.perf_counter() - t0
        finite = bool(torch.isfinite(x).all())
        x = x.nan_to_num(0.0).clamp(-1.0, 1.0)
        images[algorithm] = x
        w2 = [sw2(x, ref) for ref in ho_refs] if finite else [float("nan")]
        rows[algorithm] = {"sliced_w2": float(np.mean(w2)), "sliced_w2_subset_sd": float(np.std(w2, ddof=1)) if len(w2) > 1 else 0.0,
                           "sliced_w2_per_subset": w2, "diversity": mean_pairwise(x), **sharpness(clf, x), "finite": finite,
                           "seconds": seconds}  # fmt: skip
    d = np.asarray(rows["improved"]["sliced_w2_per_subset"]) - np.asarray(rows["naive"]["sliced_w2_per_subset"])
    rows["improved_minus_naive_sliced_w2"] = {"mean": float(d.mean()), "subset_sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0}
    return rows, images


# ------------------------------------------------------------------------------ super-resolution
def super_resolved(exp, model, low: torch.Tensor) -> tuple[torch.Tensor, float]:
    """One sample per low-resolution image by the SR run's sampler, clamped to [-1, 1]; and the seconds."""
    drawn = sd.super_resolve(exp.sde, model, exp.sampler, exp.grid, exp.conditioner, low, batch_size=low.shape[0], seed=SEED)
    return drawn.samples.nan_to_num(0.0).clamp(-1.0, 1.0), drawn.seconds


def sr_scores(x: torch.Tensor, truth: torch.Tensor, low: torch.Tensor, factor: int, data_range: float) -> dict:
    """PSNR per digit (mean, s.e., and the values for paired differences), SSIM, consistency."""
    p = sd.image_metrics.psnr(x, truth, data_range)
    return {"psnr": p.mean().item(), "psnr_stderr": (p.std() / math.sqrt(p.numel())).item(), "_psnr": p,
            "ssim": sd.image_metrics.ssim(x, truth, data_range).mean().item(),
            "consistency_rms": (sd.conditioning.downsample(x, factor) - low).pow(2).mean().sqrt().item()}  # fmt: skip


def cascade_row(x: torch.Tensor, labels: torch.Tensor, clf, reference) -> dict:
    pred = torch.as_tensor(clf.predict(_flat(x)))
    acc = (pred == labels).double().mean().item()
    return {"accuracy": acc, "accuracy_stderr": math.sqrt(acc * (1 - acc) / len(labels)), "sliced_w2": sw2(x, reference),
            "diversity": class_diversity(x, labels)}  # fmt: skip


def sr_findings(sr: dict, cascade: dict) -> tuple[list[str], dict]:
    lines, summary = [], {}
    for inputs, rows in sr.items():
        a, n, b = rows["augmented"], rows["no augmentation"], rows["bicubic"]
        d, se = rows["augmented_minus_none_psnr"], rows["augmented_minus_none_stderr"]
        verdict = _verdict(d, se, up="augmentation better", down="no augmentation better")
        vs_bicubic = {k: _verdict(rows[f"{k}_minus_bicubic_psnr"], rows[f"{k}_minus_bicubic_stderr"], up="above bicubic", down="below bicubic")
                      for k in SR_MODELS}  # fmt: skip
        summary[inputs] = {"augmented_minus_none_psnr": d, "stderr": se, "verdict": verdict, "vs_bicubic": vs_bicubic}
        lines.append(
            f"- **Super-resolution from {inputs}.** PSNR {n['psnr']:.2f} dB (no augmentation, {vs_bicubic['no augmentation']}), "
            f"{a['psnr']:.2f} dB (augmentation, {vs_bicubic['augmented']}), bicubic {b['psnr']:.2f} dB; SSIM {n['ssim']:.3f} / "
            f"{a['ssim']:.3f} / {b['ssim']:.3f}. Augmentation minus none: {d:+.2f} ± {se:.2f} dB (**{verdict}**)."
        )
    clean, noisy = list(sr)
    drops = {k: (sr[clean][k]["psnr"] - sr[noisy][k]["psnr"], math.hypot(sr[clean][k]["psnr_stderr"], sr[noisy][k]["psnr_stderr"]))
             for k in SR_MODELS}  # fmt: skip
    summary["psnr_drop_from_noisy_inputs"] = {k: {"db": d, "stderr": se} for k, (d, se) in drops.items()}
    lines.append(
        f"- **Robustness.** From clean to noisy inputs the PSNR drops by {drops['no augmentation'][0]:.2f} ± {drops['no augmentation'][1]:.2f} dB "
        f"without augmentation and by {drops['augmented'][0]:.2f} ± {drops['augmented'][1]:.2f} dB with it (s.e. of independent "
        "estimates): the augmented model is the more robust, but at this noise level its lower fidelity on clean inputs still costs "
        "more than it saves. On clean inputs it is corrupted on purpose (the sampling level), and trusts the input less: its samples' "
        f"consistency |A x - low| is {sr[clean]['augmented']['consistency_rms']:.3f} against {sr[clean]['no augmentation']['consistency_rms']:.3f}."
    )
    c = cascade
    dc, sec = (
        c["augmented"]["accuracy"] - c["no augmentation"]["accuracy"],
        math.hypot(c["augmented"]["accuracy_stderr"], c["no augmentation"]["accuracy_stderr"]),
    )
    summary["cascade_accuracy_augmented_minus_none"] = {
        "difference": dc,
        "stderr": sec,
        "verdict": _verdict(dc, sec, up="augmentation better", down="no augmentation better"),
    }
    lines.append(
        f"- **Cascade** (base 4x4 samples, CFG w = {BOTH_CFG:g}, then x2): accuracy {_acc(c['no augmentation'])} (SR without augmentation), "
        f"{_acc(c['augmented'])} (with), {_acc(c['bicubic'])} (bicubic); sliced W2 {c['no augmentation']['sliced_w2']:.4f} / "
        f"{c['augmented']['sliced_w2']:.4f} / {c['bicubic']['sliced_w2']:.4f}. Augmentation minus none: accuracy {dc:+.3f} ± {sec:.3f} "
        f"(**{summary['cascade_accuracy_augmented_minus_none']['verdict']}**); both far above bicubic upsampling of the base samples."
    )
    lines.append(
        "- One sample per digit is scored: a sample of the posterior has twice the posterior mean's expected squared error, so PSNR "
        "favours blurry estimates such as bicubic; SSIM and the cascade's accuracy weigh the detail a sample restores."
    )
    summary["cascade"] = {k: {"accuracy": c[k]["accuracy"], "sliced_w2": c[k]["sliced_w2"]} for k in (*SR_MODELS, "bicubic")}
    return lines, summary


def run_super_resolution(steps: dict, quick: bool, log, clf, reference, per_class: int) -> dict:
    """Part C: train the two SR models and the base model; score SR on held-out digits and the cascade."""
    models = {}
    for name, extra in SR_MODELS.items():
        cfg = _config(["experiment=digits_sr", *extra], steps["sr"], quick)
        models[name] = train(cfg, log, f"super-resolution, {name} ({' '.join(['experiment=digits_sr', *extra])})")
    bexp, base, base_info = train(
        _config(["experiment=digits_cascade"], steps["base"], quick), log, "cascade base (experiment=digits_cascade)"
    )
    exp = models["augmented"][0]
    factor, truth = exp.conditioner.factor, exp.data.test
    data_range = float(truth.max() - truth.min())
    clean_low = sd.conditioning.downsample(truth, factor)
    noisy_low = clean_low + NOISY_LOW * torch.randn(clean_low.shape, generator=torch.Generator().manual_seed(SEED))
    sr: dict = {}
    images: dict = {}
    for inputs, low in (("clean 4x4 inputs", clean_low), (f"4x4 inputs + N(0, {NOISY_LOW:g}^2)", noisy_low)):
        rows: dict = {}
        for name, (e, model, _) in models.items():
            x, seconds = super_resolved(e, model, low)
            rows[name] = {**sr_scores(x, truth, low, factor, data_range), "seconds": seconds}
            images[(inputs, name)] = x
        bic = sd.conditioning.bicubic_upsample(low, (truth.shape[-2], truth.shape[-1])).clamp(-1.0, 1.0)
        rows["bicubic"] = sr_scores(bic, truth, low, factor, data_range)
        images[(inputs, "bicubic")], images[(inputs, "low")] = bic, low
        for a, b in (("augmented", "no augmentation"), ("augmented", "bicubic"), ("no augmentation", "bicubic")):
            d = rows[a]["_psnr"] - rows[b]["_psnr"]
            key = "augmented_minus_none" if b == "no augmentation" else f"{a}_minus_bicubic"
            rows[f"{key}_psnr"], rows[f"{key}_stderr"] = d.mean().item(), (d.std() / math.sqrt(d.numel())).item()
        for r in rows.values():
            if isinstance(r, dict):
                r.pop("_psnr", None)
        sr[inputs] = rows
        log(
            f"  SR from {inputs}: "
            + ", ".join(f"{k} PSNR {rows[k]['psnr']:.2f} dB SSIM {rows[k]['ssim']:.3f}" for k in (*SR_MODELS, "bicubic"))
        )
    labels = torch.arange(N_CLASSES).repeat_interleave(per_class)
    grid = functools.partial(sd.log_snr_time_grid, n_steps=SAMPLER_STEPS, eps=SAMPLER_EPS)
    drawn = draw_samples(bexp.sde, sd.GuidedScore(base, labels, BOTH_CFG), sd.dpm_solver_pp, grid, bexp.data.data_shape, len(labels),
                         batch_size=len(labels), seed=SEED)  # fmt: skip
    base_samples = drawn.samples.nan_to_num(0.0).clamp(-1.0, 1.0)
    reference_low = bexp.data.test[balanced_subset(bexp.data.test_labels, per_class)]  # part A's subset, at 4x4
    cascade = {"base_sliced_w2_vs_held_out_4x4": sw2(base_samples, reference_low)}
    cascade_images = {"base": base_samples}
    for name, (e, model, _) in models.items():
        x, _ = super_resolved(e, model, base_samples)
        cascade[name], cascade_images[name] = cascade_row(x, labels, clf, reference), x
    bic = sd.conditioning.bicubic_upsample(base_samples, (truth.shape[-2], truth.shape[-1])).clamp(-1.0, 1.0)
    cascade["bicubic"], cascade_images["bicubic"] = cascade_row(bic, labels, clf, reference), bic
    log(
        "  cascade: "
        + ", ".join(f"{k} accuracy {_acc(cascade[k])}, sliced W2 {cascade[k]['sliced_w2']:.4f}" for k in (*SR_MODELS, "bicubic"))
    )
    training = {f"sr_{name.replace(' ', '_')}": {"overrides": ["experiment=digits_sr", *SR_MODELS[name]], **info}
                for name, (_, _, info) in models.items()}  # fmt: skip
    training["cascade_base"] = {"overrides": ["experiment=digits_cascade"], **base_info}
    return {"training": training, "conditioning": {k: repr(m[0].conditioner) for k, m in models.items()}, "noisy_low_std": NOISY_LOW,
            "sampler": f"DPM-Solver++(2M) (the SR config's sampler=dpm_solver) on log_snr_time_grid, {int(exp.grid.keywords['n_steps'])} steps",
            "held_out": sr, "cascade": cascade,
            "_images": images, "_cascade_images": cascade_images, "_labels": labels}  # fmt: skip


# ---------------------------------------------------------------------------------------- figures
def row_figure(rows: list[tuple[str, torch.Tensor]], n_cols: int, ax, title: str) -> None:
    """One tile per row of ``rows`` (``(label, (n_cols, C, H, W))``), labelled on the left."""
    images = torch.cat([x[:n_cols] for _, x in rows])
    h = images.shape[-2] + 1
    ax.imshow(_tile_images(images, n_cols, (-1.0, 1.0))[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([1 + h * i + (h - 1) / 2 for i in range(len(rows))], [label for label, _ in rows], fontsize=8)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_anchor("N")  # rows narrower than their box sit under the title; the saved PNG crops the rest
    ax.set_title(title, fontsize=9)


def guidance_figure(rows, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7.0, 0.6 * len(rows) + 1.2), layout="constrained")
    row_figure(rows, N_CLASSES, ax, title)
    fit_titles(fig)  # a long title wraps over the images instead of running off the figure
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def cold_figure(panels: list[tuple[str, list]], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 0.5 * len(panels[0][1]) + 1.2), layout="constrained")
    for ax, (name, rows) in zip(np.atleast_1d(axes), panels, strict=True):
        row_figure(rows, 10, ax, name)
    fig.suptitle(title, fontsize=9)
    fit_titles(fig)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------------ text
def _acc(r: dict) -> str:
    return f"{r['accuracy']:.3f} ± {r['accuracy_stderr']:.3f}"


def _cmp(a: dict, b: dict) -> tuple[float, float]:
    """accuracy(a) - accuracy(b) and the s.e. of independent estimates (conservative: rows share their prior noise)."""
    return a["accuracy"] - b["accuracy"], math.hypot(a["accuracy_stderr"], b["accuracy_stderr"])


def _verdict(d: float, se: float, up: str = "yes", down: str = "no (lower)") -> str:
    if se == 0.0:
        return up if d > 0 else (down if d < 0 else "no change")
    return up if d > 2 * se else (down if d < -2 * se else "not resolved (within 2 s.e.)")


def guidance_findings(rows: dict, div_ref: float, clf_acc: float, floor: float) -> tuple[list[str], dict]:
    lines, summary = [], {}
    for method, scales in (("cfg", CFG_SCALES), ("classifier", CLS_SCALES)):
        series = [rows[method][str(s)] for s in scales]
        d, se = _cmp(series[-1], series[0])
        accs = [r["accuracy"] for r in series]
        monotone = all(b >= a - 1e-12 for a, b in zip(accs, accs[1:], strict=False))
        best = scales[int(np.argmax(accs))]
        divs = [r["diversity"] for r in series]
        verdict = _verdict(d, se)
        summary[method] = {"acc_gain_max_scale": d, "stderr": se, "verdict": verdict, "monotone": monotone, "best_scale": best,
                           "diversity_first": divs[0], "diversity_last": divs[-1]}  # fmt: skip
        what = "w" if method == "cfg" else "s"
        lines.append(
            f"- **{'Classifier-free guidance' if method == 'cfg' else 'Classifier guidance'}.** Accuracy "
            + ", ".join(f"{acc:.3f} ({what} = {s:g})" for s, acc in zip(scales, accs, strict=True))
            + f"; {what} = {scales[-1]:g} against {what} = {scales[0]:g}: {d:+.3f} ± {se:.3f}. Does accuracy rise with the scale? "
            f"**{verdict}** ({'monotone' if monotone else 'not monotone'} over the grid; best at {what} = {best:g}). "
            f"Diversity {divs[0]:.3f} → {divs[-1]:.3f} (held-out digits: {div_ref:.3f}); sliced W2 "
            f"{series[0]['sliced_w2']:.4f} → {series[-1]['sliced_w2']:.4f}."
        )
    base = rows["cfg"][str(BOTH_CFG)]
    comb = []
    for s in BOTH_SCALES:
        both, cls_only = rows["both"][str(s)], rows["classifier"][str(s)]
        d_cfg, se_cfg = _cmp(both, base)
        d_cls, se_cls = _cmp(both, cls_only)
        comb.append({"s": s, "vs_cfg": d_cfg, "vs_cfg_stderr": se_cfg, "vs_classifier": d_cls, "vs_classifier_stderr": se_cls})
    best_single = max([rows["cfg"][str(w)]["accuracy"] for w in CFG_SCALES] + [rows["classifier"][str(s)]["accuracy"] for s in CLS_SCALES])
    best_both = max(rows["both"][str(s)]["accuracy"] for s in BOTH_SCALES)
    helps = [_verdict(c["vs_cfg"], c["vs_cfg_stderr"]) for c in comb]
    help_text = "; ".join(f"s = {c['s']:g}: {v}" for c, v in zip(comb, helps, strict=True))
    summary["both"] = {"comparisons": comb, "best_both_accuracy": best_both, "best_single_accuracy": best_single, "verdicts_vs_cfg": helps}
    lines.append(
        f"- **Both.** Against CFG w = {BOTH_CFG:g} alone ({_acc(base)}), adding classifier guidance changes accuracy by "
        + ", ".join(f"{c['vs_cfg']:+.3f} ± {c['vs_cfg_stderr']:.3f} (s = {c['s']:g})" for c in comb)
        + "; against classifier guidance alone at the same s by "
        + ", ".join(f"{c['vs_classifier']:+.3f} ± {c['vs_classifier_stderr']:.3f} (s = {c['s']:g})" for c in comb)
        + f". Best accuracy with both {best_both:.3f}, best with either alone {best_single:.3f}. Does combining help over CFG "
        f"w = {BOTH_CFG:g}? **{help_text}**."
    )
    flat = [(m, float(k), r) for m, by_scale in rows.items() for k, r in by_scale.items()]
    n = round(max(r["accuracy"] * (1 - r["accuracy"]) / r["accuracy_stderr"] ** 2 for _, _, r in flat if r["accuracy_stderr"] > 0))
    at_ceiling = [(m, k) for m, k, r in flat if r["accuracy"] >= clf_acc]
    perfect = [(m, k) for m, k, r in flat if r["accuracy"] == 1.0]
    best_w2 = min(flat, key=lambda x: x[2]["sliced_w2"])
    summary["ceiling"] = {"rows_at_or_above_clean_accuracy": len(at_ceiling), "rows_perfect": len(perfect), "rows": len(flat)}
    summary["lowest_sliced_w2"] = {"method": best_w2[0], "scale": best_w2[1], "sliced_w2": best_w2[2]["sliced_w2"], "floor": floor}
    lines.append(
        f"- **Ceiling.** {len(at_ceiling)} of {len(flat)} rows reach an accuracy at or above the clean classifier's own held-out "
        f"accuracy ({clf_acc:.3f}), {len(perfect)} are perfect: beyond that the accuracy cannot separate the methods (a perfect row's "
        f"binomial s.e. of 0 is no uncertainty; with no error in {n} samples the error rate is below 3/{n} = {3 / n:.3f} at 95 %). "
        f"The fidelity/diversity trade-off shows instead: every guided family loses within-class diversity as its scale grows (held-out "
        f"digits {div_ref:.3f}), and the lowest sliced W2 of all rows is {best_w2[2]['sliced_w2']:.4f} ({METHOD_NAMES[best_w2[0]]} = "
        f"{best_w2[1]:g}; floor {floor:.4f}). Classifier guidance at s = 0 is the unconditional model, whose 'within-label' diversity "
        "mixes classes."
    )
    lines.append(
        "- The s.e. of a difference is that of independent estimates; the rows share their prior noise (paired), "
        "so it is conservative. The clean-data logistic regression judging the samples is not the guiding classifier."
    )
    return lines, summary


def cold_findings(cold: dict, floor: float) -> tuple[list[str], dict]:
    lines, summary = [], {}
    for deg, r in cold.items():
        parts, summary[deg] = [], {}
        for t in T_STARTS:
            x = r["restoration"][str(t)]
            d, se = x["improved_minus_naive_mse"], x["improved_minus_naive_stderr"]
            verdict = _verdict(-d, se, up="yes", down="no (Alg. 1 better)")
            summary[deg][str(t)] = {
                "psnr_naive": x["naive"]["psnr"],
                "psnr_improved": x["improved"]["psnr"],
                "mse_diff": d,
                "stderr": se,
                "verdict": verdict,
            }
            dd, sed = x["improved_minus_direct_mse"], x["improved_minus_direct_stderr"]
            verdict_direct = _verdict(-dd, sed, up="Alg. 2 better", down="the direct call better")
            summary[deg][str(t)].update(mse_diff_vs_direct=dd, stderr_vs_direct=sed, verdict_vs_direct=verdict_direct)
            text = (
                f"t = {t:g}: PSNR {x['naive']['psnr']:.2f} → {x['improved']['psnr']:.2f} dB, ΔMSE {d:+.5f} ± {se:.5f} (**{verdict}**; "
                f"against one direct call R(D(x, t), t), {x['direct R(x_t, t)']['psnr']:.2f} dB: {verdict_direct})"
            )
            if max(x["naive"]["output_spread"], x["improved"]["output_spread"]) < 1e-4:
                summary[deg][str(t)]["one_output"] = True
                text += (
                    " — here every digit gives the same output image (the input D(x, t) is the same for all), so the comparison is "
                    "one image against another and its s.e. over digits says nothing about the algorithms"
                )
            parts.append(text)
        g = r["generation"]
        gd = g["improved_minus_naive_sliced_w2"]
        gen_verdict = _verdict(-gd["mean"], gd["subset_sd"], up="Alg. 2 closer", down="Alg. 1 closer")
        summary[deg]["generation_sw2"] = {a: g[a]["sliced_w2"] for a in ("naive", "improved")}
        summary[deg]["generation_verdict"] = gen_verdict
        lines.append(
            f"- **Cold diffusion, {deg}.** Does Alg. 2 restore better than Alg. 1? "
            + "; ".join(parts)
            + f". Generation: sliced W2 {g['naive']['sliced_w2']:.4f} (Alg. 1) vs {g['improved']['sliced_w2']:.4f} (Alg. 2), paired "
            f"difference {gd['mean']:+.4f} (sd {gd['subset_sd']:.4f} over the held-out subsets): **{gen_verdict}** to the held-out "
            f"digits (floor {floor:.4f}); clean-classifier max "
            f"probability {g['naive']['max_prob']:.3f} vs {g['improved']['max_prob']:.3f}, predicted-class entropy "
            f"{g['naive']['class_hist_entropy_bits']:.2f} vs {g['improved']['class_hist_entropy_bits']:.2f} bits."
        )
    lines.append(
        "- Theory: for a linear D and a restorer error e, Alg. 2 ends at x_0 + e - D(e, 1); under blur D(e, 1) keeps the smooth "
        "part of e, which cancels, but for the full mask D(e, 1) = 0, so at t = 1 nothing cancels and Alg. 2 has no first-order "
        "advantage (a mask below t = 1 leaves the unmasked pixels, where Alg. 2 can still cancel the error)."
    )
    return lines, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"a short smoke run ({QUICK_STEPS} steps per model, EMA 0.99, {QUICK_PER_CLASS} samples per class)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training, sampling and evaluation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    steps = {k: QUICK_STEPS if args.quick else v for k, v in STEPS.items()}
    per_class = QUICK_PER_CLASS if args.quick else PER_CLASS
    n_cold = QUICK_COLD_SAMPLES if args.quick else COLD_SAMPLES
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    # ------------------------------------------------------------------------------ A. guidance
    score_overrides = ["experiment=digits"]
    cls_overrides = ["train_task=classifier", "data=digits", "model=classifier_unet"]  # sde-train task=classifier
    cfg_score = _config(score_overrides, steps["score"], args.quick)
    cfg_cls = _config(cls_overrides, steps["classifier"], args.quick)
    exp, model, info_score = train(cfg_score, log, "score model (experiment=digits)")
    cexp, classifier, info_cls = train(cfg_cls, log, "noisy classifier (task=classifier model=classifier_unet)")
    if repr(cexp.sde) != repr(exp.sde):
        raise SystemExit(f"the classifier's SDE {cexp.sde!r} differs from the score model's {exp.sde!r}")
    for p in classifier.parameters():
        p.requires_grad_(False)  # only grad_x is needed
    data, sde = exp.data, exp.sde
    times = [f * sde.T for f in NOISE_LEVELS]
    noisy_acc = noisy_accuracy(classifier, sde, data.test, data.test_labels, times, seed=SEED).tolist()
    log("noisy classifier held-out accuracy: " + ", ".join(f"t={t:g}: {a:.3f}" for t, a in zip(times, noisy_acc, strict=True)))

    clf, clf_acc = clean_classifier(data)
    log(f"clean classifier (logistic regression on clean training digits): held-out accuracy {clf_acc:.4f}")
    labels = torch.arange(N_CLASSES).repeat_interleave(per_class)
    reference = data.test[balanced_subset(data.test_labels, per_class)]
    gen = torch.Generator().manual_seed(SW2_SEED)
    floor_values = [sw2(data.train[balanced_subset(data.train_labels, per_class, gen)], reference) for _ in range(SW2_SUBSETS)]
    floor = float(np.mean(floor_values))
    div_ref = class_diversity(data.test, data.test_labels)
    div_train = class_diversity(data.train, data.train_labels)
    log(f"held-out references: within-class diversity {div_ref:.4f} (training digits {div_train:.4f}); sliced W2 floor {floor:.4f}")

    guidance: dict = {"cfg": {}, "classifier": {}, "both": {}}
    images = {}
    for method, scale, score_fn in guided_scores(model, classifier, labels):
        r, samples = sample_row(sde, score_fn, labels, data.data_shape, clf, reference)
        guidance[method][str(scale)] = r
        images[(method, scale)] = samples
        log(f"  {method:10s} {scale:3g}: accuracy {_acc(r)}, diversity {r['diversity']:.4f}, sliced W2 {r['sliced_w2']:.4f}, "
            f"{r['seconds']:.1f} s{'' if r['finite'] else ' (NON-FINITE samples)'}")  # fmt: skip

    # ------------------------------------------------------------------------- B. cold diffusion
    cold: dict = {}
    cold_images = {}
    ho_gen = torch.Generator().manual_seed(SW2_SEED)
    n_ref = min(n_cold, data.test.shape[0])
    ho_refs = [data.test[torch.randperm(data.test.shape[0], generator=ho_gen)[:n_ref]] for _ in range(SW2_SUBSETS)]
    tr_gen = torch.Generator().manual_seed(SW2_SEED + 1)
    cold_floor = float(np.mean([sw2(data.train[torch.randperm(data.train.shape[0], generator=tr_gen)[:n_ref]], ref) for ref in ho_refs]))
    ho_sharp = sharpness(clf, data.test)
    ho_div = mean_pairwise(data.test)
    log(f"cold references: sliced W2 floor ({n_ref} training vs held-out digits) {cold_floor:.4f}; held-out diversity {ho_div:.4f}, "
        f"clean max prob {ho_sharp['max_prob']:.3f}, class entropy {ho_sharp['class_hist_entropy_bits']:.2f} bits")  # fmt: skip
    for deg in DEGRADATIONS:
        cfg = _config(["experiment=digits_cold", f"degradation={deg}"], steps["cold"], args.quick)
        cexp_d, restorer, info = train(cfg, log, f"cold restorer (experiment=digits_cold degradation={deg})")
        degradation = cexp_d.loss_fn.degradation
        n_steps, noise = int(cfg.cold.steps), float(cfg.cold.noise)
        test = cexp_d.data.test
        peak = float(test.max() - test.min())
        restoration = cold_restoration(restorer, degradation, test, n_steps, peak)
        for t in T_STARTS:
            x = restoration[str(t)]
            log(f"  {deg} t={t:g}: PSNR input {x['degraded input']['psnr']:.2f}, direct {x['direct R(x_t, t)']['psnr']:.2f}, "
                f"Alg. 1 {x['naive']['psnr']:.2f}, Alg. 2 {x['improved']['psnr']:.2f} dB "
                f"(ΔMSE {x['improved_minus_naive_mse']:+.5f} ± {x['improved_minus_naive_stderr']:.5f})")  # fmt: skip
        generation, gen_images = cold_generation(restorer, degradation, cexp_d.data, n_cold, n_steps, noise, clf, ho_refs)
        for a, g in ((a, generation[a]) for a in ("naive", "improved")):
            log(f"  {deg} generation {a:8s}: sliced W2 {g['sliced_w2']:.4f}, diversity {g['diversity']:.4f}, max prob {g['max_prob']:.3f}, "
                f"class entropy {g['class_hist_entropy_bits']:.2f} bits, {g['seconds']:.1f} s")  # fmt: skip
        cold_images[deg] = ({t: restoration[str(t)].pop("_images") for t in T_STARTS}, gen_images)
        cold[deg] = {"training": info, "degradation": repr(degradation), "cold_steps": n_steps, "noise": noise, "peak": peak,
                     "restoration": restoration, "generation": generation}  # fmt: skip

    # ------------------------------------------------------------------------ C. super-resolution
    sr = run_super_resolution(steps, args.quick, log, clf, reference, per_class)
    sr_images, cascade_images, cascade_labels = sr.pop("_images"), sr.pop("_cascade_images"), sr.pop("_labels")

    g_lines, g_summary = guidance_findings(guidance, div_ref, clf_acc, floor)
    c_lines, c_summary = cold_findings(cold, cold_floor)
    s_lines, s_summary = sr_findings(sr["held_out"], sr["cascade"])
    wall = time.perf_counter() - start

    # ------------------------------------------------------------------------------------ output
    out = {
        "quick": args.quick,
        "platform": {"torch": torch.__version__, "python": sys.version.split()[0], "sklearn": sklearn.__version__,
                     "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                     "threads": torch.get_num_threads()},  # fmt: skip
        "seed": SEED,
        "training": {"score": {"overrides": score_overrides, **info_score}, "classifier": {"overrides": cls_overrides, **info_cls},
                     **{f"cold_{d}": {"overrides": ["experiment=digits_cold", f"degradation={d}"], **cold[d]["training"]} for d in DEGRADATIONS},
                     **sr["training"]},
        "sde": repr(sde),
        "noisy_classifier_accuracy": {"times": times, "accuracy": noisy_acc},
        "clean_classifier": {"model": "LogisticRegression(max_iter=2000) on the 64 pixels, [-1, 1) scale", "held_out_accuracy": clf_acc},
        "sampling": {"sampler": f"dpm_solver_pp (2M, data prediction) on log_snr_time_grid(sde, {SAMPLER_STEPS}, {SAMPLER_EPS:g})",
                     "samples": len(labels), "per_class": per_class, "seed": SEED, "clamp": [-1.0, 1.0],
                     "sliced_w2": f"vs a class-balanced held-out subset of {len(labels)} (first {per_class} per class), 256 directions"},
        "references": {"held_out_within_class_diversity": div_ref, "train_within_class_diversity": div_train,
                       "sliced_w2_floor": floor, "sliced_w2_floor_sd": float(np.std(floor_values, ddof=1))},
        "guidance": guidance,
        "cold_references": {"sliced_w2_floor": cold_floor, "held_out_diversity": ho_div, **{f"held_out_{k}": v for k, v in ho_sharp.items()}},
        "cold": cold,
        "super_resolution": {k: v for k, v in sr.items() if k != "training"},
        "findings": {"guidance": g_summary, "cold": c_summary, "super_resolution": s_summary},
        "wall_seconds": wall,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / ("guidance_quick" if args.quick else "guidance")
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")

    first = balanced_subset(labels, 1)
    fig_rows = [("held-out digits", data.test[balanced_subset(data.test_labels, 1)])]
    fig_rows += [(f"{ {'cfg': 'CFG w', 'classifier': 'classifier s', 'both': f'CFG {BOTH_CFG:g} + classifier s'}[m]} = {s:g}",
                  images[(m, s)][first]) for m, s in FIGURE_ROWS]  # fmt: skip
    guidance_figure(fig_rows, stem.with_suffix(".png"),
                    f"one sample per label 0..9, the same prior noise in every row; DPM-Solver++(2M), {SAMPLER_STEPS} steps\n"
                    f"score model {steps['score']} and noisy classifier {steps['classifier']} training steps")  # fmt: skip
    cold_png = stem.parent / f"{stem.name}_cold.png"
    panels = []
    show = balanced_subset(data.test_labels, 1)
    for deg in DEGRADATIONS:
        rest, gen_images = cold_images[deg]
        rows = [("clean", data.test[show])]
        for t in (0.5, 1.0):
            rows += [(f"D(x, {t:g})", rest[t]["degraded input"][show]), (f"Alg. 1 from {t:g}", rest[t]["naive"][show]),
                     (f"Alg. 2 from {t:g}", rest[t]["improved"][show])]  # fmt: skip
        rows += [("gen. start", gen_images["start"]), ("gen. Alg. 1", gen_images["naive"]), ("gen. Alg. 2", gen_images["improved"])]
        panels.append((f"{deg}: {cold[deg]['degradation']}", rows))
    cold_figure(panels, cold_png, f"cold diffusion, {cold['blur']['cold_steps']} restorer calls, {steps['cold']} training steps; "
                "held-out digits restored from t = 0.5 and 1, and generated from D(x, 1) + N(0, 0.05^2)")  # fmt: skip

    def cold_row(name, r, key):
        return (
            f"| {name} | "
            + " | ".join(
                f"{r[str(t)][key]['mse']:.5f} ± {r[str(t)][key]['mse_stderr']:.5f} ({r[str(t)][key]['psnr']:.2f} dB)" for t in T_STARTS
            )
            + " |"
        )

    sampler_text = out["sampling"]["sampler"]
    lines = [
        "# Guidance and cold diffusion on the digits",
        "",
        f"Torch {torch.__version__}, {torch.get_num_threads()} thread(s), seed {SEED}; EMA weights. Whole run {wall / 60:.1f} min.",
        "",
        "| model | overrides | steps | batch | lr | training (s) | steps/s | last loss | parameters |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {name} | `{' '.join(t['overrides'])}` | {t['steps']} | {t['batch_size']} | {t['lr']:g} | {t['seconds']:.0f} | "
            f"{t['steps_per_sec']:.2f} | {t['last_loss']:.4f} | {t['parameters']:,} |"
            for name, t in (
                ("score model", out["training"]["score"]),
                ("noisy classifier", out["training"]["classifier"]),
                *[(f"cold restorer, {d}", out["training"][f"cold_{d}"]) for d in DEGRADATIONS],
                *[(f"super-resolution, {k}", out["training"][f"sr_{k.replace(' ', '_')}"]) for k in SR_MODELS],
                ("cascade base (4x4)", out["training"]["cascade_base"]),
            )
        ],  # fmt: skip
        "",
        "## A. Guidance (VP SDE)",
        "",
        "Noisy-data classifier (`task=classifier model=classifier_unet`), held-out accuracy on x_t (one draw per digit and time):",
        "",
        "| t | " + " | ".join(f"{t:g}" for t in times) + " |",
        "|---|" + "---|" * len(times),
        "| accuracy | " + " | ".join(f"{a:.3f}" for a in noisy_acc) + " |",
        "",
        f"{len(labels)} samples ({per_class} per label) by {sampler_text}, the same prior noise in every row, clamped to [-1, 1]. "
        f"Accuracy: a clean-data logistic regression (held-out accuracy **{clf_acc:.3f}**) predicts the label asked for, ± binomial s.e. "
        f"Diversity: mean distance between two samples of the same label, averaged over labels (held-out digits **{div_ref:.3f}**, "
        f"training digits {div_train:.3f}). Sliced W2 to a class-balanced held-out subset of {len(labels)} (floor, balanced training "
        f"subsets: {floor:.4f}). Clean max prob: the logistic regression's mean top probability.",
        "",
        "| method | scale | accuracy | diversity | sliced W2 | clean max prob | seconds |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {METHOD_NAMES[m]} | {s} | {_acc(r)} | {r['diversity']:.3f} | {r['sliced_w2']:.4f} | {r['clean_max_prob']:.3f} | {r['seconds']:.1f} |"
            + ("" if r["finite"] else " non-finite samples (set to 0 before clamping)")
            for m, rows in guidance.items()
            for s, r in rows.items()
        ],  # fmt: skip
        "",
        f"![one sample per label for a few settings]({stem.name}.png)",
        "",
        "## B. Cold diffusion (Bansal et al. 2022): Alg. 1 (naive) vs Alg. 2 (improved)",
        "",
        f"Restoration of the {data.test.shape[0]} held-out digits degraded to t: MSE per pixel ± s.e. over digits (PSNR from the mean MSE, "
        f"peak = held-out max - min = {cold['blur']['peak']:.3f}); {cold['blur']['cold_steps']} restorer calls for Alg. 1 and 2, one for "
        "the direct R(D(x, t), t).",
        "",
    ]
    for deg in DEGRADATIONS:
        r = cold[deg]["restoration"]
        lines += [
            f"**{deg}** (`{cold[deg]['degradation']}`)",
            "",
            "| restoration | " + " | ".join(f"t = {t:g}" for t in T_STARTS) + " |",
            "|---|" + "---|" * len(T_STARTS),
            cold_row("degraded input (no restoration)", r, "degraded input"),
            cold_row("direct R(D(x, t), t)", r, "direct R(x_t, t)"),
            cold_row("Alg. 1 (naive)", r, "naive"),
            cold_row("Alg. 2 (improved)", r, "improved"),
            "| MSE(Alg. 2) - MSE(Alg. 1), paired | " + " | ".join(f"{r[str(t)]['improved_minus_naive_mse']:+.5f} ± {r[str(t)]['improved_minus_naive_stderr']:.5f}" for t in T_STARTS) + " |",
            "",
        ]  # fmt: skip
    lines += [
        f"Generation: {n_cold} samples from D(x_0, 1) + N(0, {cold['blur']['noise']:g}^2) of random training digits, the same starts for both "
        f"algorithms. Sliced W2 to {n_ref} held-out digits, mean over {SW2_SUBSETS} random held-out subsets (floor, random training subsets: "
        f"{cold_floor:.4f}); diversity: mean pairwise distance (held-out digits {ho_div:.3f}); the clean classifier's mean max probability "
        f"(held-out {ho_sharp['max_prob']:.3f}), mean entropy in nats (held-out {ho_sharp['entropy_nats']:.3f}) and the entropy of the "
        f"predicted-class histogram in bits (held-out {ho_sharp['class_hist_entropy_bits']:.2f}, at most 3.32).",
        "",
        "| degradation | algorithm | sliced W2 | diversity | max prob | entropy (nats) | class entropy (bits) | seconds |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {deg} | {a} | {g['sliced_w2']:.4f} ± {g['sliced_w2_subset_sd']:.4f} | {g['diversity']:.3f} | {g['max_prob']:.3f} | "
            f"{g['entropy_nats']:.3f} | {g['class_hist_entropy_bits']:.2f} | {g['seconds']:.1f} |"
            for deg in DEGRADATIONS
            for a, g in ((a, cold[deg]["generation"][a]) for a in ("naive", "improved"))
        ],  # fmt: skip
        "",
        "In the figure, masked pixels (value 0) are mid-grey; the rows from t = 1 of the mask start from the same all-zero image.",
        "",
        f"![cold diffusion: inputs, Alg. 1 and Alg. 2]({cold_png.name})",
        "",
    ]
    sr_png = stem.parent / f"{stem.name}_sr.png"
    sr_rows = []
    for inputs in sr["held_out"]:
        sr_rows += [(f"{inputs}: low", sr_images[(inputs, "low")]), ("bicubic", sr_images[(inputs, "bicubic")]),
                    *[(f"SR, {k}", sr_images[(inputs, k)]) for k in SR_MODELS]]  # fmt: skip
    sr_rows.append(("truth", data.test))
    first = balanced_subset(data.test_labels, 1)
    size = (data.test.shape[-2], data.test.shape[-1])

    def shown(x: torch.Tensor) -> torch.Tensor:  # 4x4 rows drawn as 8x8 blocks
        return x if x.shape[-2:] == data.test.shape[-2:] else torch.nn.functional.interpolate(x, size=size, mode="nearest")

    sr_rows = [(name, shown(x[first])) for name, x in sr_rows]
    pick = balanced_subset(cascade_labels, 1)
    sr_rows += [("cascade base 4x4", shown(cascade_images["base"][pick])), ("cascade, bicubic", cascade_images["bicubic"][pick]),
                *[(f"cascade, SR {k}", cascade_images[k][pick]) for k in SR_MODELS]]  # fmt: skip
    cold_figure([("super-resolution x2 of held-out digits 0..9, and the cascade (one sample per label)", sr_rows)], sr_png,
                f"super-resolution 4x4 -> 8x8, {steps['sr']} training steps; cascade base {steps['base']} steps")  # fmt: skip
    h = sr["held_out"]
    lines += [
        "## C. Super-resolution 4x4 -> 8x8 and a cascade",
        "",
        f"SR models: {', '.join(f'{k} `{v}`' for k, v in sr['conditioning'].items())}; sampler {sr['sampler']} (clamped to [-1, 1]). "
        f"The {data.test.shape[0]} held-out digits, each super-resolved once from its 4x4 block means; PSNR ± s.e. over digits "
        f"(peak {float(data.test.max() - data.test.min()):.3f}), SSIM (7x7 windows), RMS consistency |A x - low|.",
        "",
        "| inputs | method | PSNR (dB) | SSIM | consistency RMS |",
        "|---|---|---|---|---|",
        *[
            f"| {inputs} | {k} | {r[k]['psnr']:.2f} ± {r[k]['psnr_stderr']:.2f} | {r[k]['ssim']:.3f} | {r[k]['consistency_rms']:.4f} |"
            for inputs, r in h.items()
            for k in (*SR_MODELS, "bicubic")
        ],  # fmt: skip
        "",
        f"Cascade: {len(cascade_labels)} base samples at 4x4 ({per_class} per label, CFG w = {BOTH_CFG:g}, DPM-Solver++(2M) {SAMPLER_STEPS} steps; "
        f"sliced W2 to the held-out 4x4 digits {sr['cascade']['base_sliced_w2_vs_held_out_4x4']:.4f}), taken to 8x8 by each method; accuracy "
        f"under the clean classifier and sliced W2 to the balanced held-out subset of part A (floor {floor:.4f}).",
        "",
        "| second stage | accuracy | sliced W2 | within-label diversity |",
        "|---|---|---|---|",
        *[
            f"| {k} | {_acc(sr['cascade'][k])} | {sr['cascade'][k]['sliced_w2']:.4f} | {sr['cascade'][k]['diversity']:.3f} |"
            for k in (*SR_MODELS, "bicubic")
        ],  # fmt: skip
        "",
        f"![super-resolution and the cascade]({sr_png.name})",
        "",
        "## Findings",
        "",
        *g_lines,
        *c_lines,
        *s_lines,
        "",
    ]
    if args.quick:
        lines.insert(2, f"**Quick smoke run** ({QUICK_STEPS} training steps per model): the numbers say nothing about the methods.\n")
    stem.with_suffix(".md").write_text("\n".join(lines))
    log(f"wrote {stem}.{{json,md,png}}, {cold_png.name} and {sr_png.name}; wall time {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
