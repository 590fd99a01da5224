"""``sde-train``: train a score model with the composed config, then sample, plot and summarise.

Writes into the Hydra run directory: ``checkpoints/last.pt``, ``metrics.jsonl``, ``loss.png``,
``samples.npz``, ``samples.png`` (samples beside held-out data), ``summary.json``, and ``.hydra/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .. import distributed
from .._checks import check_range
from .._log import say
from ..app.config import ConfigError, task_name
from ..app.runs import build_experiment, load_cascade_stage
from ..samplers.guidance import check_guidance
from ..tasks import TASKS, Finished
from ..tasks.score import with_prior_samples
from ..training import NonFiniteLossError, Trainer, TrainingInterrupted, load_checkpoint
from . import _resume
from ._common import (
    check_composes,
    check_group_choices,
    fail,
    latent_codec,
    refusals,
    set_threads,
    show_progress,
    speed_settings,
    speed_text,
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


def _eval_points(cfg: DictConfig) -> int:
    try:
        return check_range("eval_points", cfg.get("eval_points", 0), low=0, integer=True, hint="0 skips the held-out NLL")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train, then let the run's task (:mod:`sde_diffusion.tasks`) evaluate, sample, plot and
    summarise; returns the summary (also written to ``summary.json``)."""
    threads = set_threads(cfg.get("threads", "auto"))
    exp = build_experiment(cfg)
    task = TASKS[task_name(cfg)]
    exp.options.progress = show_progress(exp.options.progress)
    ctx = distributed.current()
    if ctx.active and exp.device.type == "cuda":
        exp.device = torch.device("cuda", ctx.local_rank)  # one GPU per process under torchrun
    eval_points = _eval_points(cfg)
    precision, compiled = speed_settings(cfg, exp.device)
    guidance = _guidance(cfg, exp.score_model)
    _check_resume_matches(cfg, run_dir)
    # a cascade's second stage, loaded before training: a wrong one fails at once
    sr = load_cascade_stage(cfg, exp.device, exp.data.data_shape)
    latent = latent_codec(cfg, exp.device)  # a latent diffusion run's autoencoder, which decodes its samples
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)  # the container of a DictConfig is a dict
    train_data, labels, row_weights, prior = exp.data.train, _train_labels(exp), None, {}
    if exp.finetune is not None and exp.finetune.prior_preservation > 0:
        train_data, labels, row_weights, prior = with_prior_samples(exp, train_data, labels, int(cfg.seed))
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
        say(
            f"{PROG}: {exp.data.name} with {task.describe(exp)} to step {exp.options.steps} on {exp.device}, "
            f"{thread_text(threads)}{procs}{speed_text(precision, compiled)}; run directory {run_dir}"
        )
        if trainer.step:
            say(f"{PROG}: resumed from step {trainer.step}")
    result = trainer.fit()
    if not ctx.is_main:  # evaluation, samples and plots are the main process's
        return {}
    choices = HydraConfig.get().runtime.choices
    seed = int(cfg.seed)
    return task.summarize(
        Finished(
            exp=exp,
            trainer=trainer,
            result=result,
            run_dir=run_dir,
            threads=threads,
            seed=seed,
            n_samples=int(cfg.n_samples),
            sampler_name=choices.get("sampler", "sampler"),
            loss_name=choices.get("loss", "loss"),
            settings=config,
            precision=precision,
            compiled=compiled,
            eval_points=eval_points,
            guidance=guidance,
            prior=prior,
            sr=sr,
            latent=latent,
        )
    )


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
