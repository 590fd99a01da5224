"""The score-model task (sde-train's default): evaluation, samples, plots and the summary of a
score run, including a cascade's second stage, a latent run's decoder and a fine-tuning run's
adapters and prior preservation (DreamBooth, Ruiz et al. 2023)."""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import numpy as np
import torch

from .._seeding import derive_seed
from ..app.plotting import image_grid, loss_curve, plot_samples
from ..distances import sliced_w2_to_held_out
from ..finetune import prior_weights, trainable_parameters
from ..latents import decode_latents
from ..likelihood.evaluate import evaluate_nll
from ..losses import LearnedUncertainty
from ..precision import accelerate
from ..sample_range import SampleRange, range_advice, sample_range
from ..samplers.draw import DrawnSamples, draw_samples
from ..samplers.guidance import GuidedScore
from ..training import Trainer, evaluate_loss
from .base import PROG, Drawn, Finished, Task, say, training_summary, write_summary


class ScoreTask(Task):
    """A score model (the default task), with a cascade's second stage or a latent run's decoder and
    a fine-tuning run's adapters: held-out loss of the EMA and raw weights, the held-out NLL, samples
    and how far they stray from the data's range, warnings, plots and the summary line."""

    name = "score"

    def draw(self, trained, score, sampler, grid, n, *, batch_size, seed, progress, sr=None, latent=None, low=None) -> Drawn:
        """Samples of the score model; a latent run's decoded to images (the latents beside them), a
        cascade's base samples super-resolved by its second stage (the base samples as the inputs)."""
        drawn = draw_samples(
            trained.sde,
            score,
            sampler,
            grid,
            trained.data.data_shape,
            n,
            batch_size=batch_size,
            seed=seed,
            device=trained.device,
            progress=progress,
        )
        if latent is not None:  # latent diffusion: decode the latents to images
            codec, images = latent
            decoded = DrawnSamples(decode_latents(codec, drawn.samples.float()), drawn.nfe, drawn.batch_nfe, drawn.seconds)
            return Drawn(decoded, images.test, latents=drawn.samples.float())
        if sr is None:
            return Drawn(drawn, trained.data.test)
        base = drawn.samples.float()
        up = sr.super_resolve(base, batch_size=batch_size, seed=seed, progress=progress)
        combined = DrawnSamples(
            up.samples, drawn.nfe + up.nfe, [a + b for a, b in zip(drawn.batch_nfe, up.batch_nfe, strict=True)], drawn.seconds + up.seconds
        )
        return Drawn(combined, sr.data.test, inputs=base, extra={"cascade_sr_dir": str(sr.run_dir)})

    def summarize(self, run: Finished) -> dict:
        exp, trainer, result, run_dir = run.exp, run.trainer, run.result, run.run_dir
        sr, latent = run.sr, run.latent
        ema, raw = trainer.ema_model.eval(), trainer.model.eval()
        finetuned = _finetune_summary(exp, trainer, run_dir, run.prior) if exp.finetune is not None else {}
        test = exp.data.test
        held_out_loss = evaluate_loss(ema, exp.sde, test, loss_fn=exp.loss_fn, seed=run.seed)
        held_out_loss_raw = evaluate_loss(raw, exp.sde, test, loss_fn=exp.loss_fn, seed=run.seed)
        held_out_nll = _held_out_nll(exp, ema, run.eval_points, run.seed)
        sampling_net = accelerate(ema, precision=run.precision, compile=run.compiled, device=exp.device)
        drawn = _sample(exp, sampling_net, run.n_samples, run.seed, exp.options.progress, run.guidance)
        samples, nfe, sample_sec = drawn.samples.float(), drawn.batch_nfe[0], drawn.seconds
        # the model's own samples (latents for a latent run, base images for a cascade) against its held-out data
        in_range = sample_range(samples, exp.data.test)
        raw_check = _raw_weights_check(exp, raw, run) if in_range.material else None
        warnings = _warnings(exp, run_dir, in_range, raw_check, held_out_loss, held_out_loss_raw, latent is not None)
        stage: dict = {}  # the summary of a second stage: a cascade's super-resolution or a latent run's decoder
        if sr is not None:  # the cascade's second stage: the base samples super-resolved
            _plot(samples, exp, ema, run_dir / "samples_low_res.png", title=f"{exp.data.name}: the cascade's base samples")
            base = samples
            up = sr.super_resolve(base, batch_size=base.shape[0], seed=run.seed, progress=exp.options.progress)
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
                "autoencoder_dir": str(run.settings.get("autoencoder_dir")),
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
        sampler_name = run.sampler_name
        _plot(samples, exp, ema, run_dir / "samples.png", title=f"{exp.data.name}: {type(exp.sde).__name__}, {sampler_name} ({nfe} NFE)")
        loss_curve(
            run_dir / "metrics.jsonl",
            run_dir / "loss.png",
            held_out={"held-out loss, EMA weights": held_out_loss, "held-out loss, raw weights": held_out_loss_raw},
            title=f"{exp.data.name}: {type(exp.sde).__name__}, {run.loss_name} loss",
        )

        summary = {
            **training_summary(result, run.threads),
            "ema_decay_last_step": trainer.ema.last_decay,
            "ema_weights": trainer.ema.description,  # which average the EMA weights are (post-hoc: its first profile)
            "held_out_loss_ema": held_out_loss,
            "held_out_loss_raw": held_out_loss_raw,
            "held_out_loss_ema_over_raw": held_out_loss / held_out_loss_raw if held_out_loss_raw > 0 else None,
            # EDM2's learned u(sigma): the training loss is w err / e^u + u, the held-out losses the plain w err
            **({"learned_weighting": True} if isinstance(exp.loss_fn, LearnedUncertainty) else {}),
            **held_out_nll,
            "sampler": sampler_name,
            "nfe": nfe,
            "sample_seconds": round(sample_sec, 3),
            "sliced_w2_vs_held_out": sw2,
            **in_range.summary_entries("latents" if latent is not None else "base samples" if sr is not None else "samples"),
            **({} if raw_check is None else {"raw_weights_check": raw_check[1]}),
            **stage,
            **finetuned,
            "n_samples": int(samples.shape[0]),
            "device": str(exp.device),
            "run_dir": str(run_dir),
        }
        write_summary(run_dir, summary)
        for warning in warnings:
            say(f"{PROG}: WARNING: {warning}")
        ran = (
            f"{result.steps} steps"
            if not result.resumed_from
            else f"steps {result.resumed_from}-{result.steps} ({result.steps_run} run here)"
        )
        say(
            f"{PROG}: {ran} in {result.seconds:.1f} s ({result.steps_per_sec:.0f} steps/s); held-out loss {held_out_loss:.4f} "
            f"(raw weights {held_out_loss_raw:.4f}){_nll_text(held_out_nll, latent is not None)} and samples with the {_ema_text(trainer)}; "
            f"{samples.shape[0]} samples by {sampler_name} ({nfe} NFE, {sample_sec:.1f} s), sliced W2 to held-out data {sw2:.4f}, "
            f"{in_range.brief('latents' if latent is not None else 'values')}; wrote {run_dir}"
        )
        return summary


@torch.no_grad()
def _sample(exp, score_model, n: int, seed: int, progress: bool, guidance: float = 0.0) -> DrawnSamples:
    """End-of-run samples, seeded as ``sde-sample`` seeds them: the same seed, sampler and ``n``
    reproduce them there. A class-conditional model's samples take the labels of :func:`_grid_labels`,
    guided with weight ``guidance``."""
    n_classes = getattr(score_model, "n_classes", None)
    if n_classes is not None:
        score_model = GuidedScore(score_model, grid_labels(n, n_classes), guidance)
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


def _grid_columns(n: int, n_classes: int) -> int:
    """Columns of the class grid: ``image_grid`` tiles its ``N`` images ``ceil(sqrt(N))`` to a row,
    and the grid shows the first ``N = min(n, K^2)`` samples, one class per row when ``n >= K^2``."""
    return math.ceil(math.sqrt(min(n, n_classes**2)))


def grid_labels(n: int, n_classes: int) -> torch.Tensor:
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
    return f"EMA weights ({trainer.ema.description})"


@torch.no_grad()
def _raw_weights_check(exp, raw, run: Finished) -> tuple[SampleRange, dict]:
    """Samples of the raw weights, drawn as the EMA's were (at most 500: a fraction, not a picture), when
    the EMA's leave the data's range: do the raw weights do better? Returns their range and a summary entry."""
    n = min(run.n_samples, 500)
    net = accelerate(raw, precision=run.precision, compile=run.compiled, device=exp.device)
    drawn = _sample(exp, net, n, run.seed, exp.options.progress, run.guidance)
    samples = drawn.samples.float()
    r = sample_range(samples, exp.data.test)
    return r, {"n_samples": n, "sample_range": r.as_dict(), "sliced_w2_vs_held_out": sliced_w2_to_held_out(samples, exp.data.test)}


EMA_LAG = 0.1
"""The EMA's held-out loss more than this fraction above the raw weights': the average lags."""


def _warnings(exp, run_dir: Path, in_range: SampleRange, raw_check, loss_ema: float, loss_raw: float, latent: bool) -> list[str]:
    """One line each for what the summary's numbers hide: samples outside the data's range, with the
    likely cause (from the raw weights' samples, drawn when the EMA's stray: the EMA's lag or the
    score itself), and an EMA whose held-out loss lags the raw weights'. (The other direction, raw
    weights far worse than their average, is what an EMA is for: the summary keeps both losses.)"""
    out = []
    if in_range.material:
        raw_range = None if raw_check is None else raw_check[0]
        what = "the latents leave the latent data's range" if latent else "the samples leave the data's range"
        out.append(f"{what}: {in_range.text()}; {range_advice(in_range, raw_range, hint=_path_hint(exp), ema_fix=_ema_fix(exp, run_dir))}")
    if loss_ema - loss_raw > EMA_LAG * abs(loss_raw):  # differences, not ratios: a loss may be negative (ssm)
        by = f"{loss_ema / loss_raw:.2f}x" if loss_raw > 0 else f"{loss_ema - loss_raw:.4g} above"
        out.append(
            f"the EMA weights' held-out loss {loss_ema:.4f} is {by} the raw weights' {loss_raw:.4f}: the average still "
            f"remembers early weights; train longer, {_ema_fix(exp, run_dir)}, or use the raw weights (weights=raw in sde-sample and sde-eval)"
        )
    return out


def _ema_fix(exp, run_dir: Path) -> str:
    """How the run's weight average is made shorter: its decay, or for post-hoc EMA a narrower width
    chosen after training."""
    if exp.options.ema == "posthoc":
        return f"choose a narrower average now (sde-ema run_dir={run_dir})"
    return "lower train.ema_decay"


def _path_hint(exp) -> str:
    """A fix specific to the run's path and network for samples out of range, or ''."""
    from ..models import EpsilonParameterization

    data_std = float(exp.data.test.std())
    if isinstance(exp.score_model, EpsilonParameterization) and exp.sde.prior_std > 10 * data_std:
        return (
            f"noise prediction on a path whose noise reaches {exp.sde.prior_std:g} (data std {data_std:.2g}) feeds the network inputs "
            "of that size and amplifies its errors: use EDM's preconditioning (model.preconditioning=edm)"
        )
    return ""


@torch.no_grad()
def with_prior_samples(exp, data: torch.Tensor, labels: torch.Tensor | None, seed: int) -> tuple:
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
