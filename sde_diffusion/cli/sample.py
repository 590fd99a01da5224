"""``sde-sample``: draw samples from a finished training run with any sampler of ``conf/sampler/``.

``sde-sample run_dir=<sde-train run dir> sampler=<name> n_samples=<N>`` rebuilds the run's SDE,
network and data from its saved config, loads the EMA weights, and writes into its own Hydra run
directory ``samples.npz``, ``samples.png`` and ``sample_summary.json`` (and ``.hydra/``).

``task`` chooses what to draw: ``sample`` (from the prior), ``inpaint`` (regenerate the ``mask``
region of held-out points with the predictor-corrector sampler, :func:`~sde_diffusion.samplers.inpaint`)
or ``sdedit`` (noise held-out points to ``t0`` and denoise them, :func:`~sde_diffusion.samplers.sdedit`);
sample ``i`` of the last two edits held-out point ``i mod N_test``, and ``inputs.png`` shows the inputs.
A class-conditional run samples class ``class_label`` with guidance weight ``guidance``
(:class:`~sde_diffusion.samplers.GuidedScore`), or the unconditional (null-label) model when it is null.

Seeding is that of :func:`sde_diffusion.samplers.draw_samples`: deterministic samplers give the
same samples for every ``batch_size``; stochastic ones draw their step noise per batch. The edit
tasks give batch ``b`` the same noise generator as ``draw_samples`` does, and the random mask its own.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor

from .._checks import check_range
from .._log import say
from .._noise import PerSampleNoise
from ..app.config import ConfigError, build_sampler, one_line, task_name
from ..app.plotting import image_grid, plot_samples
from ..app.runs import load_cascade_stage, load_run
from ..conditioning import downsample
from ..distances import sliced_w2_to_held_out
from ..precision import accelerate
from ..sample_range import range_advice, sample_range
from ..samplers.base import SamplerOutput
from ..samplers.controllable import MASK_REGIONS, inpaint, inpainting_mask, sdedit
from ..samplers.draw import DrawnSamples, sample_in_batches, stream_seed
from ..samplers.driver import on_driver
from ..samplers.guidance import ClassifierGuidedScore, GuidedScore, check_guidance
from ..tasks import TASKS as TRAINED_TASKS
from ..tasks import Drawn
from ..types import ScoreFn
from ._common import (
    check_composes,
    check_group_choices,
    fail,
    group_options,
    latent_codec,
    override_key,
    refusals,
    require_score_run,
    set_threads,
    show_progress,
    speed_settings,
    speed_text,
    thread_text,
)

PROG = "sde-sample"
RUN_SAMPLER = "run"
"""``sampler=run``, the default (``conf/sampler/run.yaml``): the sampler the run was trained with."""
TASKS = ("sample", "inpaint", "sdedit")
MASK = 2
"""Stream number of :func:`stream_seed` for the random inpainting mask (0 and 1 are the prior and step noise)."""


def _check_options(cfg: DictConfig) -> tuple[int, int, int, bool]:
    """``(n_samples, batch_size, seed, progress)`` from the config, each validated."""
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError("run_dir is required: sde-sample run_dir=<the directory sde-train wrote> sampler=<name>")
    try:
        values = [check_range(key, cfg.get(key), low=low, integer=True) for key, low in (("n_samples", 1), ("batch_size", 1), ("seed", 0))]
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(cfg.get("progress"), bool):
        raise ConfigError(f"progress must be true or false, got {cfg.get('progress')!r}")
    return (*values, cfg.progress)


def _nfe_text(nfe: Tensor) -> str:
    lo, hi = int(nfe.min()), int(nfe.max())
    return f"{lo} NFE" if lo == hi else f"{lo}-{hi} NFE (mean {nfe.double().mean():.1f})"


def _score(cfg: DictConfig, trained) -> ScoreFn:
    """The run's EMA score model; for ``class_label`` on a class-conditional run, the guided score
    (classifier-free guidance); with ``classifier_dir``, classifier guidance on top."""
    model = trained.score_model
    label = cfg.get("class_label")
    try:
        w = check_guidance(cfg.get("guidance", 0.0))
    except ValueError as err:
        raise ConfigError(f"guidance: {err}") from None
    classifier_dir = cfg.get("classifier_dir")
    if label is None:
        if w or classifier_dir is not None:
            what = f"guidance={w}" if w else "classifier_dir"
            raise ConfigError(
                f"{what} steers the samples towards a class: set class_label=<class> too (class_label=null samples the unconditional model)"
            )
        return model
    n_classes = getattr(model, "n_classes", None)
    if n_classes is None and classifier_dir is None:
        raise ConfigError(
            f"class_label={label} needs a class-conditional run (trained with model.net.n_classes on labelled data) or a "
            f"classifier (classifier_dir=<a sde-train task=classifier run>); this run's model is unconditional, use class_label=null"
        )
    if n_classes is not None:
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_classes:
            raise ConfigError(f"class_label must be an integer in 0..{n_classes - 1} or null, got {label!r}")
        score: ScoreFn = GuidedScore(model, label, w)
    elif w:
        raise ConfigError(
            f"guidance={w} (classifier-free) needs a class-conditional run; this one is unconditional: use guidance=0 with classifier_dir"
        )
    else:
        score = model
    return score if classifier_dir is None else _classifier_guided(cfg, trained, score, label)


def _classifier_guided(cfg: DictConfig, trained, score: ScoreFn, label) -> ScoreFn:
    """``score`` with classifier guidance by the classifier run in ``classifier_dir`` at ``classifier_scale``."""
    classifier_run = load_run(Path(str(cfg.classifier_dir)).expanduser(), trained.device)
    classifier = classifier_run.score_model
    if task_name(classifier_run.config) != "classifier":
        raise ConfigError(
            f"classifier_dir={cfg.classifier_dir} holds a score model, not a classifier: train one with sde-train task=classifier"
        )
    if repr(classifier_run.sde) != repr(trained.sde):
        raise ConfigError(
            f"the classifier was trained on x_t of {classifier_run.sde!r} but the score model uses {trained.sde!r}; "
            f"train the classifier with the score model's sde"
        )
    n_classes = int(getattr(classifier, "n_classes", 0))
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_classes:
        raise ConfigError(f"class_label must be an integer in 0..{n_classes - 1} (the classifier's classes), got {label!r}")
    try:
        return ClassifierGuidedScore(score, classifier, label, cfg.get("classifier_scale", 1.0))
    except ValueError as err:
        raise ConfigError(f"classifier_scale: {err}") from None


def _inpainting_mask(cfg: DictConfig, sampler, sampler_name: str, data_shape: tuple[int, ...]) -> Tensor:
    """The boolean mask (True = kept) for task=inpaint, which runs any fixed-grid sampler."""
    if not on_driver(sampler):
        raise ConfigError(
            f"task=inpaint needs a fixed-grid sampler (pc, ancestral, euler_maruyama, ddim, dpm_solver, unipc, ipndm, heun, ...); "
            f"got sampler={sampler_name}"
        )
    region = cfg.get("mask")
    if region not in MASK_REGIONS:
        raise ConfigError(f"mask must name the region to regenerate, one of {', '.join(MASK_REGIONS)}; got {region!r}")
    try:
        mask = inpainting_mask(region, data_shape, generator=torch.Generator().manual_seed(stream_seed(int(cfg.seed), MASK, 0)))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return mask


@torch.no_grad()
def _edit(fn, inputs: Tensor, batch_size: int, seed: int, device: torch.device, progress: bool) -> DrawnSamples:
    """``fn(x, generator=...)`` on ``inputs`` in batches, each sample with the noise stream
    :func:`draw_samples` gives it."""

    def batch(lo: int, hi: int, generator: PerSampleNoise) -> SamplerOutput:
        return fn(inputs[lo:hi].to(device), generator=generator)

    return sample_in_batches(batch, inputs.shape[0], batch_size=batch_size, seed=seed, device=device, progress=progress)


def _draw(cfg: DictConfig, trained, score: ScoreFn, sampler_name: str, built: tuple, n: int, batch_size: int, seed: int, progress: bool):
    """Run ``cfg.task`` with ``built``, the ``(sampler, grid)`` of :func:`build_sampler`: ``sample``
    by the run's own task (:meth:`sde_diffusion.tasks.Task.draw`, with the second stages its config
    names), an edit of held-out points by any score run. Returns the task's :class:`~sde_diffusion.tasks.Drawn`
    and the inpainting mask (else None)."""
    sampler, grid = built
    task, sde, data = cfg.get("task"), trained.sde, trained.data
    if task == "sample":
        sr = load_cascade_stage(trained.config, trained.device, data.data_shape)
        low, source = _low_res_inputs(cfg, trained, n) if trained.conditioner is not None else (None, None)
        drawn = TRAINED_TASKS[task_name(trained.config)].draw(
            trained, score, sampler, grid, n, batch_size=batch_size, seed=seed, progress=progress,
            sr=sr, latent=latent_codec(trained.config, trained.device), low=low,
        )  # fmt: skip
        if source is not None:
            drawn.extra["low_res"] = source
        return drawn, None
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if OmegaConf.select(trained.config, "autoencoder_dir", default=None) is not None:
        raise ConfigError(f"task={task} edits images, but this run's model works on an autoencoder's latents: use task=sample")
    if trained.conditioner is not None:
        raise ConfigError(
            f"task={task} needs an unconditional score model; this run super-resolves (task=sample, optionally low_res=<npz>)"
        )
    inputs = data.test[torch.arange(n) % data.test.shape[0]]  # sample i edits held-out point i mod N_test
    ts = grid(sde, dtype=inputs.dtype, device=trained.device)
    if task == "inpaint":
        mask = _inpainting_mask(cfg, sampler, sampler_name, data.data_shape)
        fn = functools.partial(inpaint, sde, score, mask=mask.to(trained.device), ts=ts, sampler=sampler, progress=progress)
        return Drawn(_edit(fn, inputs, batch_size, seed, trained.device, progress), data.test, inputs, extra={"mask": cfg.mask}), mask
    t0 = cfg.get("t0")
    if isinstance(t0, bool) or not isinstance(t0, (int, float)):
        raise ConfigError(f"t0 must be a number in [0, {sde.T}] (the time the inputs are noised to), got {t0!r}")
    fn = functools.partial(sdedit, sde, score, t0=t0, ts=ts, sampler=sampler, progress=progress)
    return Drawn(_edit(fn, inputs, batch_size, seed, trained.device, progress), data.test, inputs, extra={"t0": float(t0)}), None


def _low_res_inputs(cfg: DictConfig, trained, n: int) -> tuple[Tensor, str]:
    """The ``n`` low-resolution images a super-resolution run starts from: ``low_res=<file.npz>``
    (its array ``low_res``, or its only array; ``(N, C, h, w)`` in the data's units; image ``i mod N``
    for sample ``i``), else the held-out images downsampled (held-out image ``i mod N_test``)."""
    path = cfg.get("low_res")
    factor = trained.conditioner.factor
    if path is None:
        test = trained.data.test
        return downsample(test[torch.arange(n) % test.shape[0]], factor), "held-out images, downsampled"
    path = Path(str(path)).expanduser()
    try:
        with np.load(path) as arrays:
            keys = list(arrays.keys())
            key = "low_res" if "low_res" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ConfigError(f"low_res={path} holds {keys}: name the low-resolution array 'low_res'")
            low = torch.from_numpy(np.asarray(arrays[key], dtype=np.float32))
    except (OSError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"low_res={path} cannot be read as .npz ({one_line(err)})") from None
    want = trained.data.data_shape
    shape = (want[0], want[1] // factor, want[2] // factor)
    if low.dim() != 4 or tuple(low.shape[1:]) != shape or not bool(torch.isfinite(low).all()):
        raise ConfigError(
            f"low_res={path} must hold finite images (N, {', '.join(map(str, shape))}) for this x{factor} run, got {tuple(low.shape)}"
        )
    return low[torch.arange(n) % low.shape[0]], str(path)


def _task_text(task: str, extra: dict, score: ScoreFn) -> str:
    if "low_res" in extra:
        return f", super-resolved from {extra['low_res']}"
    cascade = ", cascade: base samples super-resolved" if "cascade_sr_dir" in extra else ""
    words = cascade + {"sample": "", "inpaint": f", inpainting {extra.get('mask')}", "sdedit": f", SDEdit from t0={extra.get('t0')}"}[task]
    classifier = score if isinstance(score, ClassifierGuidedScore) else None
    score = classifier.score_fn if classifier is not None else score
    if isinstance(score, GuidedScore):
        words += f", class {int(score.labels)}, guidance {score.guidance:g}"
    if classifier is not None:
        words += (
            f"{'' if isinstance(score, GuidedScore) else f', class {int(classifier.labels)}'}, classifier guidance {classifier.scale:g}"
        )
    return words


def _run_sampler_name(trained) -> str:
    """The name the run chose its sampler by (``sampler=<name>`` of sde-train, in its
    ``.hydra/hydra.yaml``), else the name of its sampler function."""
    hydra_yaml = trained.run_dir / ".hydra" / "hydra.yaml"
    name = None
    if hydra_yaml.is_file():
        try:
            name = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices.sampler", default=None)
        except (OSError, ValueError, OmegaConfBaseException):
            name = None
    target = OmegaConf.select(trained.config, "sampler.fn._target_", default="sampler")
    return str(name) if name else str(target).rsplit(".", 1)[-1]


def with_run_sampler(cfg: DictConfig, trained, overrides: Sequence[str]) -> tuple[DictConfig, str]:
    """``cfg`` with the run's own sampler (``sampler=run``): the ``sampler`` section of its saved
    config, with the command line's ``sampler.*`` overrides (``overrides``, as Hydra records them)
    set on top; and the name the run chose that sampler by."""
    saved = OmegaConf.select(trained.config, "sampler", default=None)
    if not isinstance(saved, DictConfig) or "fn" not in saved or "grid" not in saved:
        raise ConfigError(f"{trained.run_dir} saved no sampler in .hydra/config.yaml; name one: sampler=<name>")
    merged = OmegaConf.to_container(cfg)
    assert isinstance(merged, dict)  # an app's config is a mapping
    merged["sampler"] = OmegaConf.to_container(saved)
    own = OmegaConf.create(merged)
    for line in overrides:
        key = override_key(line)
        if key.startswith("sampler."):
            OmegaConf.update(own, key, OmegaConf.select(cfg, key), force_add=True)
    return own, _run_sampler_name(trained)


def run(cfg: DictConfig, out_dir: Path, *, sampler_name: str = "sampler", sampler_overrides: Sequence[str] = ()) -> dict:
    """Load ``cfg.run_dir``, run ``cfg.task`` for ``cfg.n_samples`` samples, write the files into
    ``out_dir`` and print one line; returns the summary (also written to ``sample_summary.json``).
    ``sampler_name`` is the sampler group's choice; ``run`` samples with the run's own sampler, with
    ``sampler_overrides`` (the command line's overrides; those of ``sampler.*`` keys count) on top."""
    n, batch_size, seed, progress = _check_options(cfg)
    threads = set_threads(cfg.get("threads", "auto"))
    progress = show_progress(progress)
    run_dir = Path(str(cfg.run_dir)).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir} is not a directory; pass the directory sde-train wrote")
    trained = load_run(run_dir, cfg.device, weights=str(cfg.get("weights", "ema")), sigma_rel=cfg.get("sigma_rel"))
    require_score_run(trained, PROG)
    precision, compiled = speed_settings(cfg, trained.device)
    trained.score_model = accelerate(trained.score_model, precision=precision, compile=compiled, device=trained.device)
    score = _score(cfg, trained)
    from_run = sampler_name == RUN_SAMPLER
    if from_run:
        cfg, sampler_name = with_run_sampler(cfg, trained, sampler_overrides)
    built = build_sampler(cfg, trained.sde)  # refused here, before the first line, when it cannot be built
    origin = " (the run's own sampler)" if from_run else ""
    say(
        f"{PROG}: {cfg.task} with {sampler_name}{origin} from step {trained.step} of {trained.run_dir} on {trained.device}, "
        f"{thread_text(threads)}{speed_text(precision, compiled)}"
    )
    try:
        result, mask = _draw(cfg, trained, score, sampler_name, built, n, batch_size, seed, progress)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"sampler={sampler_name}: {err}") from None

    task = cfg.task
    drawn, inputs, extra = result.samples, result.inputs, result.extra
    held_out, latents = result.held_out, result.latents  # a cascade or latent run compares with its final images
    samples = drawn.samples.float()
    arrays = {
        "samples": samples.numpy(),
        "nfe": np.int64(sum(drawn.batch_nfe)),
        "nfe_per_sample": drawn.nfe.numpy(),
        "seconds": np.float64(drawn.seconds),
    }
    if samples.dim() == 4:  # images: the data's range, as the pictures show them; the sampler's values beside
        arrays.update(samples=samples.clamp(float(held_out.min()), float(held_out.max())).numpy(), samples_unclipped=samples.numpy())
    if trained.data.scale is not None:
        arrays["samples_raw"] = trained.data.unstandardize(samples).numpy()
    if inputs is not None:
        arrays["inputs"] = inputs.numpy()
    if latents is not None:
        arrays["samples_latent"] = latents.numpy()
    if mask is not None:
        arrays["mask"] = mask.numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "samples.npz", **arrays)
    nfe = _nfe_text(drawn.nfe)
    words = _task_text(task, extra, score)
    title = f"{trained.data.name}: {type(trained.sde).__name__}, {sampler_name} ({nfe}){words}"
    units = "standardized units" if trained.data.scale is not None else None
    plot = plot_samples(samples, held_out, out_dir / "samples.png", title=title, units=units)
    if inputs is not None and inputs.shape[1:] != samples.shape[1:]:  # low-resolution inputs or base samples
        value_range = (float(held_out.min()), float(held_out.max()))
        image_grid(
            inputs,
            out_dir / "inputs.png",
            value_range=value_range,
            max_images=min(64, inputs.shape[0]),
            title=f"{trained.data.name}: inputs{words}",
        )
    elif inputs is not None:
        test = trained.data.test
        blank = 0.5 * (float(test.min()) + float(test.max()))  # regions to inpaint show as mid-grey
        shown = inputs if mask is None else torch.where(mask, inputs, blank)
        plot_samples(shown, test, out_dir / "inputs.png", title=f"{trained.data.name}: inputs{words}", units=units)
    n_bad = int((~torch.isfinite(samples.reshape(n, -1))).any(dim=1).sum())
    # sde-train's quality number: equal to its summary's for the same sampler, seed and n_samples;
    # guided samples of one class against the held-out data of that class
    reference, of_class = _reference(trained, held_out, cfg.get("class_label"), latents is not None)
    sw2 = sliced_w2_to_held_out(samples, reference) if task == "sample" else None
    # the model's own samples (latents for a latent run) against its held-out data
    in_range = sample_range(samples if latents is None else latents, reference if latents is None else trained.data.test)

    summary = {
        "run_dir": str(trained.run_dir),
        "checkpoint_step": trained.step,
        "task": task,
        **extra,
        "class_label": cfg.get("class_label"),
        "guidance": float(cfg.get("guidance", 0.0)),
        "classifier_dir": cfg.get("classifier_dir"),
        "classifier_scale": float(cfg.get("classifier_scale", 1.0)) if cfg.get("classifier_dir") else None,
        "sampler": sampler_name,
        "sampler_of_run": from_run,  # sampler=run: the run's own sampler section, with sampler.* overrides on top
        "n_samples": n,
        "batch_size": batch_size,
        "seed": seed,
        "device": str(trained.device),
        "nfe_per_batch": drawn.batch_nfe,
        "nfe_total": int(arrays["nfe"]),
        "seconds": round(drawn.seconds, 3),
        "nonfinite_samples": n_bad,
        "weights": str(cfg.get("weights", "ema")),
        "sigma_rel": cfg.get("sigma_rel"),
        "sliced_w2_vs_held_out": sw2,
        "sliced_w2_reference": of_class or "all held-out data",
        **in_range.summary_entries("latents" if latents is not None else "samples"),
        "threads": threads,
        "plot": plot.name if plot else None,
        "out_dir": str(out_dir),
    }
    (out_dir / "sample_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    warning = f"; WARNING: {n_bad} samples are not finite" if n_bad else ""
    quality = "" if sw2 is None else f", sliced W2 to {of_class or 'held-out data'} {sw2:.4f}"
    quality += f", {in_range.brief('latents' if latents is not None else 'values')}"
    if in_range.material:
        say(
            f"{PROG}: WARNING: the {'latents' if latents is not None else 'samples'} leave the data's range: {in_range.text()}; {range_advice(in_range)}"
        )
    say(
        f"{PROG}: {n} samples by {sampler_name}{words} from step {trained.step} of {trained.run_dir}: {nfe} per "
        f"sample ({summary['nfe_total']} batched evaluations), {drawn.seconds:.2f} s{quality}{warning}; wrote {out_dir}"
    )
    return summary


def _reference(trained, held_out: Tensor, class_label, latent: bool) -> tuple[Tensor, str | None]:
    """The held-out data the samples are compared with, and its name when it is not all of it: the
    held-out points of ``class_label`` for class-guided samples of labelled data (all of them for
    a latent run, whose labels are of the latents' images)."""
    labels = trained.data.test_labels
    if class_label is None or labels is None or latent or labels.shape[0] != held_out.shape[0]:
        return held_out, None
    chosen = held_out[labels.cpu() == int(class_label)]
    return (chosen, f"held-out data of class {class_label}") if chosen.shape[0] else (held_out, None)


def _check_only_sampler_group(argv: list[str]) -> None:
    """The run fixes sde, model, data, loss and train; refuse ``sde=ve``, ``data.path=...`` and the
    like in one line (Hydra's own message for them spans several). Hydra's own keys (``hydra.run.dir``,
    ``hydra.launcher.n_jobs``) are this app's as much as any other's."""
    fixed = {group for group in group_options() if group.split("/")[0] not in ("sampler", "hydra")}
    for arg in argv:
        key = override_key(arg)
        if "=" in arg and key.split(".", 1)[0] in fixed:
            fail(
                PROG,
                f"{key} is fixed by the training run's saved config (.hydra/config.yaml in run_dir); "
                f"sde-sample chooses only sampler=<name> and its options",
            )


def _for_run_sampler(argv: list[str]) -> list[str]:
    """``argv`` made ready for ``sampler=run`` (no ``sampler=<name>`` given, or ``run`` among those
    given): the run's sampler section is only known once the run is loaded, so ``sampler.*`` overrides
    become ``++sampler.*`` (set, even where ``run`` has no such key yet) and :func:`with_run_sampler`
    sets them on the run's section. ``sampler/grid=<name>`` needs a named sampler: refused. A sweep
    (``-m``) is first composed with the default sampler, ``run``, whatever samplers it sweeps over."""
    choices = [v for a in argv if override_key(a) == "sampler" and "=" in a for v in a.split("=", 1)[1].split(",")]
    if choices and RUN_SAMPLER not in choices and not {"-m", "--multirun"} & set(argv):
        return argv
    if not choices or RUN_SAMPLER in choices:
        for arg in argv:
            if override_key(arg).startswith("sampler/"):
                fail(
                    PROG,
                    f"{arg.split('=')[0]}=... sets the grid of a sampler you name: add sampler=<name> "
                    f"(without one, sde-sample uses the run's own sampler, grid included; sampler.grid.n_steps=<N> changes its steps)",
                )
    return [f"++{a}" if "=" in a and not a.startswith(("+", "~")) and override_key(a).startswith("sampler.") else a for a in argv]


@hydra.main(version_base=None, config_path="pkg://sde_diffusion.conf", config_name="sample")
def _main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    with refusals(PROG, out_dir, unreadable_checkpoint="sample another run, or train this one again"):
        run(cfg, out_dir, sampler_name=hydra_cfg.runtime.choices.get("sampler", "sampler"), sampler_overrides=hydra_cfg.overrides.task)


def main() -> None:
    # the help lists the one group sde-sample chooses (conf/sample.yaml's hydra.help.template)
    OmegaConf.register_new_resolver("sde_diffusion_group_options", lambda group: ", ".join(group_options()[group]), replace=True)
    check_group_choices(PROG, sys.argv[1:])
    _check_only_sampler_group(sys.argv[1:])
    sys.argv[1:] = _for_run_sampler(sys.argv[1:])  # Hydra reads sys.argv
    check_composes(PROG, "sample", sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
