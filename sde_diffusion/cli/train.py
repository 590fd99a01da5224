"""``sde-train``: train a score model with the composed config, then sample, plot and summarise.

Writes into the Hydra run directory: ``checkpoints/last.pt``, ``metrics.jsonl``, ``loss.png``,
``samples.npz``, ``samples.png`` (samples beside held-out data), ``summary.json``, and ``.hydra/``.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .. import distributed
from .._checks import check_range
from .._seeding import derive_seed
from ..conditioning import bicubic_upsample, downsample
from ..config import ConfigError
from ..finetune import prior_weights, trainable_parameters
from ..image_metrics import super_resolution_scores
from ..latents import latent_scale
from ..likelihood.evaluate import evaluate_nll
from ..losses.autoencoder import autoencoder_terms
from ..losses.classification import NOISE_LEVELS, noisy_accuracy
from ..plotting import accuracy_curve, image_grid, loss_curve, plot_samples
from ..precision import accelerate
from ..runs import build_experiment
from ..sample_range import SampleRange, range_advice, sample_range
from ..samplers.cold import ALGORITHMS, cold_sample
from ..samplers.draw import DrawnSamples, draw_samples, super_resolve
from ..samplers.guidance import GuidedScore, check_guidance
from ..training import NonFiniteLossError, Trainer, TrainingInterrupted, evaluate_loss, load_checkpoint
from . import _resume
from ._common import (
    cascade_sr_dir,
    check_composes,
    check_group_choices,
    decode_latents,
    fail,
    latent_codec,
    load_sr_run,
    refusals,
    say,
    set_threads,
    show_progress,
    sliced_w2_to_held_out,
    speed_settings,
    speed_text,
    super_resolve_with,
    thread_text,
    torchrun_session,
)

PROG = "sde-train"


def _check_resume_matches(cfg: DictConfig, run_dir: Path) -> None:
    """On resume, the sections the weights depend on must be those the checkpoint was trained with."""
    checkpoint = run_dir / "checkpoints" / "last.pt"
    if not cfg.train.resume or not checkpoint.exists():
        return
    changed = _resume.contradictions(load_checkpoint(checkpoint).get("config") or {}, cfg)
    if changed:
        raise ConfigError(
            f"train.resume=true continues {run_dir} with its saved config, but the overrides change {'; '.join(changed)}: "
            f"drop them (a resume needs no overrides repeated), or start a new run in a new hydra.run.dir"
        )


@torch.no_grad()
def _sample(exp, score_model, n: int, seed: int, progress: bool, guidance: float = 0.0) -> DrawnSamples:
    """End-of-run samples, seeded as ``sde-sample`` seeds them: the same seed, sampler and ``n``
    reproduce them there. A class-conditional model's samples take the labels of :func:`_grid_labels`,
    guided with weight ``guidance``."""
    n_classes = getattr(score_model, "n_classes", None)
    if n_classes is not None:
        score_model = GuidedScore(score_model, _grid_labels(n, n_classes), guidance)
    return draw_samples(
        exp.sde,
        score_model,
        exp.sampler,
        exp.grid,
        exp.data.data_shape,
        n,
        batch_size=n,
        seed=seed,
        device=exp.device,
        progress=progress,
    )


def _train_labels(exp) -> torch.Tensor | None:
    """The training labels for a class-conditional network (``model.net.n_classes`` set), else None."""
    n_classes = getattr(exp.score_model, "n_classes", None)
    if n_classes is None:
        return None
    if exp.data.train_labels is None:
        raise ConfigError(
            f"model.net.n_classes={n_classes} builds a class-conditional network but data {exp.data.name!r} has no "
            f"labels; use labelled data (data=digits, or data.labels_key=<key> with data=npz_images) or set model.net.n_classes=null"
        )
    if exp.data.n_classes > n_classes:
        raise ConfigError(
            f"data {exp.data.name!r} has {exp.data.n_classes} classes but model.net.n_classes={n_classes}; set model.net.n_classes={exp.data.n_classes}"
        )
    return exp.data.train_labels


def _guidance(cfg: DictConfig, score_model) -> float:
    """The top-level ``guidance`` weight, validated; only a class-conditional model can be guided."""
    try:
        w = check_guidance(cfg.get("guidance", 0.0))
    except ValueError as err:
        raise ConfigError(f"guidance: {err}") from None
    if w and getattr(score_model, "n_classes", None) is None:
        raise ConfigError(f"guidance={w} needs a class-conditional model (model.net.n_classes set, labelled data); use guidance=0")
    return w


def _grid_columns(n: int, n_classes: int) -> int:
    """Columns of the class grid: ``image_grid`` tiles its ``N`` images ``ceil(sqrt(N))`` to a row,
    and the grid shows the first ``N = min(n, K^2)`` samples, one class per row when ``n >= K^2``."""
    return math.ceil(math.sqrt(min(n, n_classes**2)))


def _grid_labels(n: int, n_classes: int) -> torch.Tensor:
    """Labels ``(n,)`` of the end-of-run samples of a class-conditional model: sample ``i`` has class
    ``(i // c) mod K`` for ``c`` grid columns, so row ``r`` of the grid shows class ``r mod K``."""
    return (torch.arange(n) // _grid_columns(n, n_classes)) % n_classes


def _plot(samples: torch.Tensor, exp, score_model, path: Path, title: str) -> Path | None:
    """``plot_samples`` beside held-out data; for a class-conditional image model the class grid
    (rows are classes, :func:`_grid_labels`) over the held-out data's value range."""
    n_classes = getattr(score_model, "n_classes", None)
    if n_classes is None or samples.dim() != 4:
        units = "standardized units" if exp.data.scale is not None else None
        return plot_samples(samples, exp.data.test, path, title=title, units=units)
    shown = min(samples.shape[0], n_classes**2)
    value_range = (float(exp.data.test.min()), float(exp.data.test.max()))
    return image_grid(samples, path, value_range=value_range, max_images=shown, title=f"{title}\nrow r: class r mod {n_classes}")


def _eval_points(cfg: DictConfig) -> int:
    try:
        return check_range("eval_points", cfg.get("eval_points", 0), low=0, integer=True, hint="0 skips the held-out NLL")
    except ValueError as err:
        raise ConfigError(str(err)) from None


PILOT_POINTS = 8
"""Points of the pilot solve that prices the held-out NLL before it runs."""

COST_SHOWN = 20.0
"""Seconds of estimated held-out NLL above which the estimate is printed before the evaluation."""


def _held_out_nll(exp, score_model, n_points: int, seed: int) -> dict:
    """Probability-flow NLL of ``score_model`` on the first ``n_points`` held-out points, with the
    defaults of ``sde-eval`` (exact divergence for D <= 16, else Hutchinson); {} when ``n_points`` is 0.

    A pilot solve on :data:`PILOT_POINTS` points first prices the evaluation (the solve's NFE is set
    by the model, 400 on a good VP toy and thousands on a poor one, and each NFE costs in proportion
    to the points); when the estimate passes :data:`COST_SHOWN` it is printed, with how to skip or shrink it."""
    if n_points == 0:
        return {}
    data = exp.data
    n = min(n_points, data.test.shape[0])
    nll = functools.partial(
        evaluate_nll,
        exp.sde,
        score_model,
        data.test.to(exp.device),
        levels=data.levels,
        interval_width=data.interval_width,
        seed=seed,
        density=data.distribution,
    )
    if n > 4 * PILOT_POINTS:  # a smaller evaluation costs little more than its pilot would
        pilot = nll(n_points=PILOT_POINTS)
        points, mid = data.test[:n].to(exp.device), 0.5 * float(exp.sde.T)
        estimate = pilot["seconds"] * _forward_seconds(score_model, points, mid) / _forward_seconds(score_model, points[:PILOT_POINTS], mid)
        if estimate > COST_SHOWN:
            say(
                f"{PROG}: held-out NLL on {n} points next, about {_duration(estimate)} (a {PILOT_POINTS}-point solve took "
                f"{pilot['nfe']:.0f} NFE, {pilot['seconds']:.1f} s); eval_points=<fewer> shrinks it, eval_points=0 skips it "
                f"(sde-eval run_dir=... evaluates it later)"
            )
    r = nll(n_points=n, progress=exp.options.progress)
    summary = {"held_out_nll_nats_per_dim": r["nll_nats_per_dim"], "held_out_nll_stderr": r["nll_stderr"]}
    if r["bpd"] is not None:
        summary.update(held_out_bpd=r["bpd"], held_out_bpd_stderr=r["bpd_stderr"])
    if r["data_nll_nats_per_dim"] is not None:
        summary["held_out_data_nll_nats_per_dim"] = r["data_nll_nats_per_dim"]  # the exact density's, for the gap
    summary.update(held_out_nll_points=r["n_points"], held_out_nll_nfe=r["nfe"], held_out_nll_seconds=round(r["seconds"], 3))
    return summary


@torch.no_grad()
def _forward_seconds(score_model, x: torch.Tensor, t_mid: float) -> float:
    """Seconds of one call ``score_model(x, t_mid)`` (the best of 3, after a warm-up call): the pilot
    solve's time scales by the ratio of these on the full and the pilot batch."""
    t = torch.full((x.shape[0],), t_mid, device=x.device)
    score_model(x, t)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        score_model(x, t)
        times.append(time.perf_counter() - start)
    return max(min(times), 1e-9)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _nll_text(s: dict, latent: bool = False) -> str:
    if not s:
        return ""
    text = f", NLL {'of the latents ' if latent else ''}{s['held_out_nll_nats_per_dim']:.4f} nats/dim"
    if "held_out_bpd" in s:
        text += f" ({s['held_out_bpd']:.3f} bits/dim)"
    if "held_out_data_nll_nats_per_dim" in s:
        text += f" (exact data {s['held_out_data_nll_nats_per_dim']:.4f})"
    return text + f" on {s['held_out_nll_points']} points"


def _ema_text(trainer: Trainer) -> str:
    ema = trainer.ema
    warm = ", warmed up" if ema.warmup else ""
    return f"EMA weights (decay {ema.last_decay:.4g} at the last step, at most {ema.decay:g}{warm})"


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train, sample, plot and summarise; returns the summary (also written to ``summary.json``)."""
    threads = set_threads(cfg.get("threads", "auto"))
    exp = build_experiment(cfg)
    exp.options.progress = show_progress(exp.options.progress)
    ctx = distributed.current()
    if ctx.active and exp.device.type == "cuda":
        exp.device = torch.device("cuda", ctx.local_rank)  # one GPU per process under torchrun
    eval_points = _eval_points(cfg)
    precision, compiled = speed_settings(cfg, exp.device)
    guidance = _guidance(cfg, exp.score_model)
    _check_resume_matches(cfg, run_dir)
    sr_dir = cascade_sr_dir(cfg)  # a cascade's second stage, loaded before training: a wrong one fails at once
    sr = load_sr_run(sr_dir, exp.device, exp.data.data_shape) if sr_dir is not None else None
    latent = latent_codec(cfg, exp.device)  # a latent diffusion run's autoencoder, which decodes its samples
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)  # the container of a DictConfig is a dict
    train_data, labels, row_weights, prior = exp.data.train, _train_labels(exp), None, {}
    if exp.finetune is not None and exp.finetune.prior_preservation > 0:
        train_data, labels, row_weights, prior = _with_prior_samples(exp, train_data, labels, int(cfg.seed))
    trainer = Trainer(
        exp.score_model,
        exp.sde,
        train_data,
        exp.options,
        loss_fn=exp.loss_fn,
        run_dir=run_dir,
        device=exp.device,
        seed=int(cfg.seed),
        config=config,
        labels=labels,
        dist=ctx,
        optimizer=exp.optimizer,
        lr_schedule=exp.lr_schedule,
        conditioner=exp.conditioner,
        row_weights=row_weights,
        precision=precision,
        compile=compiled,
    )
    if ctx.is_main:
        if exp.options.resume:  # accepted: record the config it continues with (Hydra was told not to)
            _resume.save_run_config(run_dir, cfg, list(HydraConfig.get().overrides.task))
        procs = f" x {ctx.world_size} processes" if ctx.active else ""
        process = (
            repr(getattr(exp.loss_fn, "degradation", None))
            if getattr(exp.score_model, "is_restorer", False)
            else ("an autoencoder" if getattr(exp.score_model, "is_autoencoder", False) else type(exp.sde).__name__)
        )
        say(
            f"{PROG}: {exp.data.name} with {process} to step {exp.options.steps} on {exp.device}, "
            f"{thread_text(threads)}{procs}{speed_text(precision, compiled)}; run directory {run_dir}"
        )
        if trainer.step:
            say(f"{PROG}: resumed from step {trainer.step}")
    result = trainer.fit()
    if not ctx.is_main:  # evaluation, samples and plots are the main process's
        return {}
    if getattr(exp.score_model, "is_classifier", False):
        return _classifier_summary(cfg, exp, trainer, result, threads, run_dir)
    if getattr(exp.score_model, "is_restorer", False):
        return _cold_summary(cfg, exp, trainer, result, threads, run_dir)
    if exp.conditioner is not None:
        return _sr_summary(cfg, exp, trainer, result, threads, run_dir)
    if getattr(exp.score_model, "is_autoencoder", False):
        return _autoencoder_summary(cfg, exp, trainer, result, threads, run_dir)

    ema, raw = trainer.ema_model.eval(), trainer.model.eval()
    finetuned = _finetune_summary(exp, trainer, run_dir, prior) if exp.finetune is not None else {}
    test = exp.data.test
    held_out_loss = evaluate_loss(ema, exp.sde, test, loss_fn=exp.loss_fn, seed=int(cfg.seed))
    held_out_loss_raw = evaluate_loss(raw, exp.sde, test, loss_fn=exp.loss_fn, seed=int(cfg.seed))
    held_out_nll = _held_out_nll(exp, ema, eval_points, int(cfg.seed))
    sampling_net = accelerate(ema, precision=precision, compile=compiled, device=exp.device)
    drawn = _sample(exp, sampling_net, int(cfg.n_samples), int(cfg.seed), exp.options.progress, guidance)
    samples, nfe, sample_sec = drawn.samples.float(), drawn.batch_nfe[0], drawn.seconds
    # the model's own samples (latents for a latent run, base images for a cascade) against its held-out data
    in_range = sample_range(samples, exp.data.test)
    raw_check = _raw_weights_check(exp, raw, cfg, precision, compiled, guidance) if in_range.material else None
    warnings = _warnings(exp, in_range, raw_check, held_out_loss, held_out_loss_raw, latent is not None)
    stage: dict = {}  # the summary of a second stage: a cascade's super-resolution or a latent run's decoder
    if sr is not None:  # the cascade's second stage: the base samples super-resolved
        _plot(samples, exp, ema, run_dir / "samples_low_res.png", title=f"{exp.data.name}: the cascade's base samples")
        base = samples
        up = super_resolve_with(sr, base, batch_size=base.shape[0], seed=int(cfg.seed), progress=exp.options.progress)
        samples = up.samples.float()
        stage = {
            "cascade_sr_dir": str(sr.run_dir),
            "cascade_sr_nfe": up.batch_nfe[0],
            "cascade_sr_seconds": round(up.seconds, 3),
            "base_sliced_w2_vs_held_out": sliced_w2_to_held_out(base, exp.data.test),
        }
        exp.data = sr.data  # plots and the sliced W2 below compare with the high-resolution held-out data
    if latent is not None:  # latent diffusion: the samples are latents; decode them to images
        codec, images = latent
        latents = samples
        samples = decode_latents(codec, latents)
        stage = {
            "autoencoder_dir": str(OmegaConf.select(cfg, "autoencoder_dir")),
            "latent_sliced_w2_vs_held_out": sliced_w2_to_held_out(latents, exp.data.test),
        }
        exp.data = images  # plots and the sliced W2 below compare with the held-out images
    arrays = {"samples": samples.numpy()}
    if samples.dim() == 4:  # images: the data's range, as the pictures show them; the sampler's values beside
        test = exp.data.test
        arrays.update(samples=samples.clamp(float(test.min()), float(test.max())).numpy(), samples_unclipped=samples.numpy())
    if sr is not None:
        arrays["samples_low_res"] = base.numpy()
    if latent is not None:
        arrays["samples_latent"] = latents.numpy()
    if exp.data.scale is not None:
        arrays["samples_raw"] = exp.data.unstandardize(samples).numpy()
    np.savez(run_dir / "samples.npz", allow_pickle=True, **arrays)  # numpy's default, named so that mypy
    # does not match **arrays against allow_pickle: bool
    sw2 = sliced_w2_to_held_out(samples, exp.data.test)
    sampler_name = HydraConfig.get().runtime.choices.get("sampler", "sampler")
    _plot(samples, exp, ema, run_dir / "samples.png", title=f"{exp.data.name}: {type(exp.sde).__name__}, {sampler_name} ({nfe} NFE)")
    loss_curve(
        run_dir / "metrics.jsonl",
        run_dir / "loss.png",
        held_out={"held-out loss, EMA weights": held_out_loss, "held-out loss, raw weights": held_out_loss_raw},
        title=f"{exp.data.name}: {type(exp.sde).__name__}, {HydraConfig.get().runtime.choices.get('loss', 'loss')} loss",
    )

    summary = {
        **_training_summary(result, threads),
        "ema_decay_last_step": trainer.ema.last_decay,
        "held_out_loss_ema": held_out_loss,
        "held_out_loss_raw": held_out_loss_raw,
        "held_out_loss_ema_over_raw": held_out_loss / held_out_loss_raw if held_out_loss_raw > 0 else None,
        **held_out_nll,
        "sampler": sampler_name,
        "nfe": nfe,
        "sample_seconds": round(sample_sec, 3),
        "sliced_w2_vs_held_out": sw2,
        "samples_outside_range": in_range.fraction_outside,  # top-level copies for sde-summarize's table
        "samples_max_abs_ratio": in_range.max_abs_ratio,
        "sample_range": {**in_range.as_dict(), "of": "latents" if latent is not None else "base samples" if sr is not None else "samples"},
        **({} if raw_check is None else {"raw_weights_check": raw_check[1]}),
        **stage,
        **finetuned,
        "n_samples": int(samples.shape[0]),
        "device": str(exp.device),
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for warning in warnings:
        say(f"{PROG}: WARNING: {warning}")
    ran = (
        f"{result.steps} steps" if not result.resumed_from else f"steps {result.resumed_from}-{result.steps} ({result.steps_run} run here)"
    )
    say(
        f"{PROG}: {ran} in {result.seconds:.1f} s ({result.steps_per_sec:.0f} steps/s); held-out loss {held_out_loss:.4f} "
        f"(raw weights {held_out_loss_raw:.4f}){_nll_text(held_out_nll, latent is not None)} and samples with the {_ema_text(trainer)}; "
        f"{samples.shape[0]} samples by {sampler_name} ({nfe} NFE, {sample_sec:.1f} s), sliced W2 to held-out data {sw2:.4f}, "
        f"{_range_text(in_range, latent is not None)}; wrote {run_dir}"
    )
    return summary


def _range_text(r: SampleRange, latent: bool) -> str:
    """The summary line's range statement: ``"0.1% outside the data's range, largest |x| 1.1x the data's"``."""
    what = "latents" if latent else "values"
    return f"{100 * r.fraction_outside:.1f}% of {what} outside the data's range (largest |x| {r.max_abs_ratio:.1f}x the data's)"


@torch.no_grad()
def _raw_weights_check(exp, raw, cfg: DictConfig, precision: str, compiled: bool, guidance: float) -> tuple[SampleRange, dict]:
    """Samples of the raw weights, drawn as the EMA's were (at most 500: a fraction, not a picture), when
    the EMA's leave the data's range: do the raw weights do better? Returns their range and a summary entry."""
    n = min(int(cfg.n_samples), 500)
    net = accelerate(raw, precision=precision, compile=compiled, device=exp.device)
    drawn = _sample(exp, net, n, int(cfg.seed), exp.options.progress, guidance)
    samples = drawn.samples.float()
    r = sample_range(samples, exp.data.test)
    return r, {"n_samples": n, "sample_range": r.as_dict(), "sliced_w2_vs_held_out": sliced_w2_to_held_out(samples, exp.data.test)}


EMA_LAG = 0.1
"""The EMA's held-out loss more than this fraction above the raw weights': the average lags."""


def _warnings(exp, in_range: SampleRange, raw_check, loss_ema: float, loss_raw: float, latent: bool) -> list[str]:
    """One line each for what the summary's numbers hide: samples outside the data's range, with the
    likely cause (from the raw weights' samples, drawn when the EMA's stray: the EMA's lag or the
    score itself), and an EMA whose held-out loss lags the raw weights'. (The other direction, raw
    weights far worse than their average, is what an EMA is for: the summary keeps both losses.)"""
    out = []
    if in_range.material:
        raw_range = None if raw_check is None else raw_check[0]
        what = "the latents leave the latent data's range" if latent else "the samples leave the data's range"
        out.append(f"{what}: {in_range.text()}; {range_advice(in_range, raw_range, hint=_path_hint(exp))}")
    if loss_ema - loss_raw > EMA_LAG * abs(loss_raw):  # differences, not ratios: a loss may be negative (ssm)
        by = f"{loss_ema / loss_raw:.2f}x" if loss_raw > 0 else f"{loss_ema - loss_raw:.4g} above"
        out.append(
            f"the EMA weights' held-out loss {loss_ema:.4f} is {by} the raw weights' {loss_raw:.4f}: the average still "
            f"remembers early weights; train longer, lower train.ema_decay, or use the raw weights (weights=raw in sde-sample and sde-eval)"
        )
    return out


def _path_hint(exp) -> str:
    """A fix specific to the run's path and network for samples out of range, or ''."""
    from ..models import EpsilonParameterization

    data_std = float(exp.data.test.std())
    if isinstance(exp.score_model, EpsilonParameterization) and exp.sde.prior_std > 10 * data_std:
        fix = "model=mlp_edm" if len(exp.data.data_shape) == 1 else "model.parameterization._target_=sde_diffusion.EDMPreconditioning"
        return (
            f"noise prediction on a path whose noise reaches {exp.sde.prior_std:g} (data std {data_std:.2g}) feeds the network inputs "
            f"of that size and amplifies its errors: use EDM's preconditioning ({fix})"
        )
    return ""


@torch.no_grad()
def _with_prior_samples(exp, data: torch.Tensor, labels: torch.Tensor | None, seed: int) -> tuple:
    """Prior preservation (DreamBooth, Ruiz et al. 2023, Eq. 2): the fine-tuning data followed by
    ``finetune.prior_samples`` samples the initial model draws (the classes it knew, in turn), with the
    row weights of ``E_new[L] + lambda E_prior[L]``; and what was drawn, for the summary."""
    ft, model = exp.finetune, exp.score_model
    n, known = ft.prior_samples, ft.known_classes
    prior_labels = None if known is None else torch.arange(n) % known
    model.eval()  # no dropout while sampling; the adapters are fresh and the new rows unused: the initial model
    score = model if prior_labels is None else GuidedScore(model, prior_labels, 0.0)
    drawn = draw_samples(
        exp.sde, score, exp.sampler, exp.grid, exp.data.data_shape, n, batch_size=n, seed=derive_seed(seed, 7), device=exp.device
    )
    model.train()
    samples = drawn.samples.float().cpu()
    merged_labels = None if labels is None or prior_labels is None else torch.cat([labels.cpu(), prior_labels])
    weights = prior_weights(data.shape[0], n, ft.prior_preservation)
    info = {"prior_samples": n, "prior_classes": known, "prior_nfe": drawn.batch_nfe[0], "prior_seconds": round(drawn.seconds, 3)}
    say(f"{PROG}: prior preservation: {n} samples of the initial model (classes 0..{(known or 1) - 1}), weight {ft.prior_preservation:g}")
    return torch.cat([data.cpu(), samples]), merged_labels, weights, info


def _finetune_summary(exp, trainer: Trainer, run_dir: Path, prior: dict) -> dict:
    """A fine-tuning run: what trained, and its small file ``adapters.pt`` (the trained parameters
    only: LoRA's A and B, new embedding rows) for LoRA and embedding runs."""
    trained = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    out = {"finetune": repr(exp.finetune), "trainable_parameters": trainable_parameters(trainer.model), **prior}
    if len(trained) < len(list(trainer.model.parameters())):
        state = {k: v.detach().clone() for k, v in trainer.ema_model.state_dict().items() if k in set(trained)}
        torch.save(state, run_dir / "adapters.pt")
        out.update(adapters_file="adapters.pt", adapters_bytes=(run_dir / "adapters.pt").stat().st_size)
    return out


def _training_summary(result, threads) -> dict:
    """The summary's training part, shared by both tasks."""
    return {
        "steps": result.steps,
        "steps_run": result.steps_run,
        "resumed_from_step": result.resumed_from,
        "train_seconds": round(result.seconds, 3),
        "steps_per_sec": round(result.steps_per_sec, 2),
        "threads": threads,
        "final_train_loss": result.last_loss,
        "evaluated_weights": "ema",
    }


def _cold_summary(cfg: DictConfig, exp, trainer: Trainer, result, threads, run_dir: Path) -> dict:
    """Cold diffusion: held-out digits degraded to each ``cold.t_starts`` level and restored by Alg. 1
    and Alg. 2 (MSE per pixel and PSNR over the data's range), and samples generated by both from
    fully degraded training data plus ``N(0, cold.noise^2)`` (samples_naive.png, samples_improved.png)."""
    restorer, degradation = trainer.ema_model.eval(), getattr(exp.loss_fn, "degradation")  # noqa: B009 (RestorationLoss)
    cold = OmegaConf.to_container(cfg.get("cold") or OmegaConf.create({}))
    assert isinstance(cold, dict)
    n_steps, noise, t_starts = (
        int(cold.get("steps", 20)),
        float(cold.get("noise", 0.05)),
        [float(t) for t in cold.get("t_starts", [0.5, 1.0])],
    )
    test = exp.data.test.to(exp.device)
    peak = float(test.max() - test.min())
    restoration: dict = {}
    for algorithm in ALGORITHMS:
        restoration[algorithm] = {}
        for t in t_starts:
            restored = cold_sample(restorer, degradation, degradation(test, t), n_steps, algorithm=algorithm, t_start=t).samples
            mse = float((restored - test).pow(2).mean())
            restoration[algorithm][str(t)] = {"mse": mse, "psnr": 10 * math.log10(peak**2 / mse)}
    gen = torch.Generator().manual_seed(int(cfg.seed))
    n = int(cfg.n_samples)
    train = exp.data.train
    start = degradation(train[torch.randint(train.shape[0], (n,), generator=gen)], 1.0)
    start = (start + noise * torch.randn(start.shape, generator=gen)).to(exp.device)
    sw2: dict = {}
    value_range = (float(test.min()), float(test.max()))
    for algorithm in ALGORITHMS:
        samples = cold_sample(restorer, degradation, start, n_steps, algorithm=algorithm).samples.float().cpu()
        sw2[algorithm] = sliced_w2_to_held_out(samples, exp.data.test)
        image_grid(
            samples,
            run_dir / f"samples_{algorithm}.png",
            value_range=value_range,
            title=f"{exp.data.name}: cold diffusion, {degradation!r}, {algorithm}",
        )
    loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"{exp.data.name}: restoration loss, {degradation!r}")
    summary = {
        "task": "cold",
        **_training_summary(result, threads),
        "degradation": repr(degradation),
        "cold_steps": n_steps,
        "restoration": restoration,
        "generation_noise": noise,
        "sliced_w2_vs_held_out": sw2,
        "n_samples": n,
        "device": str(exp.device),
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    t_last = str(t_starts[-1])
    say(
        f"{PROG}: {result.steps} steps in {result.seconds:.1f} s; restoring held-out data from t={t_last}: PSNR "
        f"{restoration['naive'][t_last]['psnr']:.2f} dB (Alg. 1) vs {restoration['improved'][t_last]['psnr']:.2f} dB (Alg. 2); "
        f"{n} samples, sliced W2 {sw2['naive']:.4f} (Alg. 1) vs {sw2['improved']:.4f} (Alg. 2); wrote {run_dir}"
    )
    return summary


def _sr_summary(cfg: DictConfig, exp, trainer: Trainer, result, threads, run_dir: Path) -> dict:
    """Super-resolution: the held-out images super-resolved from their low-resolution versions (one
    sample each, the config's sampler), PSNR/SSIM against the truth beside bicubic upsampling, and
    samples.png (low-res | bicubic | super-resolved | truth)."""
    ema, conditioner = trainer.ema_model.eval(), exp.conditioner
    test = exp.data.test
    held_out_loss = evaluate_loss(ema, exp.sde, test, loss_fn=exp.loss_fn, seed=int(cfg.seed), conditioner=conditioner)
    n = min(int(cfg.n_samples), test.shape[0])
    truth = test[:n]
    low = downsample(truth, conditioner.factor)
    sampler_name = HydraConfig.get().runtime.choices.get("sampler", "sampler")
    drawn = super_resolve(
        exp.sde,
        ema,
        exp.sampler,
        exp.grid,
        conditioner,
        low,
        batch_size=n,
        seed=int(cfg.seed),
        device=exp.device,
        progress=exp.options.progress,
    )
    samples = drawn.samples.float()
    data_range = float(test.max() - test.min())
    scores = super_resolution_scores(samples, truth, low, conditioner.factor, data_range)
    np.savez(run_dir / "samples.npz", samples=samples.numpy(), low_res=low.numpy(), truth=truth.numpy())
    shown = min(n, 16)
    bicubic = bicubic_upsample(low[:shown], (truth.shape[-2], truth.shape[-1]))
    nearest = torch.nn.functional.interpolate(low[:shown], size=(truth.shape[-2], truth.shape[-1]), mode="nearest")
    rows = torch.stack([nearest, bicubic, samples[:shown], truth[:shown]], 1).flatten(0, 1)  # each row: one held-out image
    image_grid(
        rows,
        run_dir / "samples.png",
        value_range=(float(test.min()), float(test.max())),
        max_images=rows.shape[0],
        title=f"{exp.data.name}: x{conditioner.factor} super-resolution ({sampler_name})\neach group of 4: low-res | bicubic | sample | truth",
    )
    loss_curve(
        run_dir / "metrics.jsonl",
        run_dir / "loss.png",
        held_out={"held-out loss, EMA weights": held_out_loss},
        title=f"{exp.data.name}: super-resolution",
    )
    summary = {
        "task": "super_resolution",
        **_training_summary(result, threads),
        "conditioning": repr(conditioner),
        "held_out_loss_ema": held_out_loss,
        "sampler": sampler_name,
        "nfe": drawn.batch_nfe[0],
        "sample_seconds": round(drawn.seconds, 3),
        "n_images": n,
        **scores,
        "device": str(exp.device),
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    sr, bc = scores["super_resolved"], scores["bicubic"]
    say(
        f"{PROG}: {result.steps} steps in {result.seconds:.1f} s; {n} held-out images super-resolved x{conditioner.factor} by {sampler_name}: "
        f"PSNR {sr['psnr']:.2f} dB, SSIM {sr['ssim']:.3f} (bicubic {bc['psnr']:.2f} dB, {bc['ssim']:.3f}); wrote {run_dir}"
    )
    return summary


@torch.no_grad()
def _autoencoder_summary(cfg: DictConfig, exp, trainer: Trainer, result, threads, run_dir: Path) -> dict:
    """task=autoencoder: held-out reconstruction NLL, KL and the VAE's bound (bits/dim for discrete
    data), the latents' scale factor (latents.json) and reconstructions (recon.png)."""
    ae, data, levels = trainer.ema_model.eval(), exp.data, getattr(exp.loss_fn, "levels", None)
    gen = torch.Generator(device=exp.device).manual_seed(int(cfg.seed))
    test = data.test.to(exp.device)
    terms = [autoencoder_terms(ae, xb, levels=levels, generator=gen) for xb in test.split(1000)]
    recon, kl = (torch.cat([t[k] for t in terms]).double() for k in ("reconstruction", "kl"))
    d = test[0].numel()
    scale = latent_scale(ae, data.train.to(exp.device), seed=int(cfg.seed))
    scale.save(run_dir)
    shown = test[:32]
    pairs = torch.stack([shown, ae(shown)], 1).flatten(0, 1)
    image_grid(pairs.cpu(), run_dir / "recon.png", value_range=(float(test.min()), float(test.max())), max_images=pairs.shape[0],
               title=f"{data.name}: held-out images and their reconstructions, in pairs")  # fmt: skip
    loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"{data.name}: autoencoder loss")
    ln2 = math.log(2)
    per_dim = (recon + kl) / d
    summary = {
        "task": "autoencoder",
        **_training_summary(result, threads),
        "loss": repr(exp.loss_fn),
        "latent_shape": list(scale.latent_shape),
        "scale_factor": scale.scale_factor,
        "held_out_reconstruction_nats_per_dim": float(recon.mean() / d),
        "held_out_kl_nats_per_dim": float(kl.mean() / d),
        # the decoder's mean clamped to the data's range: a discretized decoder's outer levels take whole tails
        "held_out_reconstruction_rmse": float((ae(test).clamp(float(test.min()), float(test.max())) - test).pow(2).mean().sqrt()),
        # the VAE's bound -log P(x) <= E_q[-log p(x|z)] + KL: bits/dim of the discrete data (with the decoder on its levels)
        "held_out_vae_bound_bpd": float(per_dim.mean() / ln2) if levels else None,
        "held_out_vae_bound_bpd_stderr": float(per_dim.std() / math.sqrt(len(per_dim)) / ln2) if levels else None,
        "device": str(exp.device),
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    bound = f", VAE bound {summary['held_out_vae_bound_bpd']:.3f} bits/dim" if levels else ""
    say(
        f"{PROG}: {result.steps} steps in {result.seconds:.1f} s; held-out reconstruction {summary['held_out_reconstruction_nats_per_dim']:.4f} "
        f"nats/dim (RMSE {summary['held_out_reconstruction_rmse']:.4f}), KL {summary['held_out_kl_nats_per_dim']:.4f} nats/dim{bound}; "
        f"latents {scale.latent_shape}, scale factor {scale.scale_factor:.4f} (latents.json); wrote {run_dir}"
    )
    return summary


def _classifier_summary(cfg: DictConfig, exp, trainer: Trainer, result, threads, run_dir: Path) -> dict:
    """task=classifier: held-out cross-entropy and accuracy at each noise level (accuracy.png), no samples."""
    ema, test = trainer.ema_model.eval(), exp.data.test.to(exp.device)
    labels = exp.data.test_labels.to(exp.device)
    seed = int(cfg.seed)
    gen = torch.Generator(device=exp.device).manual_seed(seed)
    with torch.no_grad():
        total = sum(
            exp.loss_fn(lambda x, t, y=yb: ema(x, t, y), exp.sde, xb, generator=gen).sum().item()
            for xb, yb in zip(test.split(1000), labels.split(1000), strict=True)
        )
    cross_entropy = total / test.shape[0]
    times = [f * exp.sde.T for f in NOISE_LEVELS]
    accuracy = noisy_accuracy(ema, exp.sde, test, labels, times, seed=seed).tolist()
    accuracy_curve(
        times,
        accuracy,
        run_dir / "accuracy.png",
        chance=1.0 / exp.score_model.n_classes,
        title=f"{exp.data.name}: {type(exp.sde).__name__} classifier",
    )
    loss_curve(
        run_dir / "metrics.jsonl",
        run_dir / "loss.png",
        held_out={"held-out cross-entropy, EMA weights": cross_entropy},
        title=f"{exp.data.name}: classifier",
    )
    summary = {
        "task": "classifier",
        **_training_summary(result, threads),
        "held_out_cross_entropy": cross_entropy,
        "held_out_accuracy_times": times,
        "held_out_accuracy": accuracy,
        "n_classes": exp.score_model.n_classes,
        "device": str(exp.device),
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    shown = ", ".join(
        f"{a:.3f} at t={t:g}" for t, a in zip(times, accuracy, strict=True) if t in (times[0], times[len(times) // 2], times[-1])
    )
    say(
        f"{PROG}: {result.steps} steps in {result.seconds:.1f} s ({result.steps_per_sec:.0f} steps/s); held-out cross-entropy "
        f"{cross_entropy:.4f} averaged over t; accuracy {shown} (accuracy.png); wrote {run_dir}"
    )
    return summary


@hydra.main(version_base=None, config_path="pkg://sde_diffusion.conf", config_name="config")
def _main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with refusals(PROG, run_dir, unreadable_checkpoint="this run cannot be resumed: start a new run in a new hydra.run.dir"):
        try:
            run(cfg, run_dir)
        except NonFiniteLossError as err:
            fail(PROG, str(err), code=3)
        except TrainingInterrupted as err:
            where = f"; checkpoint at step {err.step} in {err.checkpoint}" if err.checkpoint else ""
            say(f"{PROG}: stopped by {err.signal_name}{where}; continue with: sde-train hydra.run.dir={run_dir} train.resume=true")
            sys.exit(err.exit_code)
        except KeyboardInterrupt:  # after training (evaluation, sampling): the last checkpoint is complete
            say(
                f"{PROG}: interrupted after training; the checkpoint in {run_dir / 'checkpoints'} is complete, summary.json was not written"
            )
            sys.exit(130)


def _task_alias(argv: list[str]) -> list[str]:
    """``task=<name>`` is sde-train's name for the ``train_task`` config group (``task`` itself is a
    plain key of sde-sample, and Hydra would read a group of that name as an override of it)."""
    return [("train_task=" + a.split("=", 1)[1]) if a.startswith("task=") else a for a in argv]


def main() -> None:
    sys.argv[1:] = _task_alias(sys.argv[1:])
    check_group_choices(PROG, sys.argv[1:])
    sys.argv[1:] = _resume.prepare(PROG, sys.argv[1:])
    check_composes(PROG, "config", sys.argv[1:])
    with torchrun_session(PROG, sys.argv, "outputs/%Y-%m-%d/%H-%M-%S"):
        _main()


if __name__ == "__main__":
    main()
