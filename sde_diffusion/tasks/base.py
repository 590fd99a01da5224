"""What every kind of sde-train run shares: the finished run a task summarizes, the samples a task
draws for ``sde-sample``, the task's interface, and the summary's training part. A task is a module
of this package (score model, classifier, autoencoder, cold diffusion, super-resolution); the apps
choose one from the run's config (:func:`sde_diffusion.app.config.task_name`) and call it, so a new kind
of run adds a module here and a name there, and no app dispatches on flags of the model."""

from __future__ import annotations

import abc
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from .._log import say

PROG = "sde-train"


@dataclass
class Finished:
    """A finished training run as its task summarizes it: the built experiment (``exp``), the
    ``trainer`` and its ``result``, where it wrote (``run_dir``), and the app's settings that the
    summary needs, as plain values (no config object reaches a task)."""

    exp: Any  # sde_diffusion.app.runs.Experiment
    trainer: Any  # sde_diffusion.training.Trainer
    result: Any  # the trainer's FitResult
    run_dir: Path
    threads: int
    seed: int
    n_samples: int
    sampler_name: str
    loss_name: str
    settings: dict = field(default_factory=dict)  # the run's resolved config, plain (a task's own section, e.g. cold)
    precision: str = "fp32"
    compiled: bool = False
    eval_points: int = 0
    guidance: float = 0.0
    prior: dict = field(default_factory=dict)  # a fine-tuning run's prior-preservation samples, for the summary
    sr: Any = None  # a cascade's second stage (a loaded super-resolution run, sde_diffusion.app.runs.TrainedRun)
    latent: Any = None  # a latent run's (codec, image data)


@dataclass
class Drawn:
    """What a task drew for ``sde-sample``: the ``samples`` (:class:`~sde_diffusion.samplers.DrawnSamples`;
    images for a latent run or a cascade), the ``held_out`` data ``(N, *dims)`` they are compared
    with, the ``inputs`` they were made from (low-resolution images, a cascade's base samples, the
    images an edit started from; else None), a latent run's ``latents`` and the ``extra`` summary
    entries that say how they were made (``low_res``, ``cascade_sr_dir``, ...)."""

    samples: Any  # sde_diffusion.samplers.DrawnSamples
    held_out: Tensor
    inputs: Tensor | None = None
    latents: Tensor | None = None
    extra: dict = field(default_factory=dict)


class Task(abc.ABC):
    """One kind of sde-train run: what its first line says it trains, its summary (files, the
    summary line, ``summary.json``), and whether and how ``sde-sample`` draws from it."""

    name: ClassVar[str]

    def describe(self, exp) -> str:
        """What the first line names as trained: the SDE by default."""
        return type(exp.sde).__name__

    def refusal(self, prog: str, run_dir: Path) -> str | None:
        """Why ``prog`` (``sde-sample``, ``sde-eval``) cannot use this task's run in ``run_dir`` as a
        score model, in one line with what to do instead; None when it can (the default)."""
        return None

    def draw(
        self,
        trained,
        score,
        sampler: Callable,
        grid: Callable,
        n: int,
        *,
        batch_size: int,
        seed: int,
        progress: bool,
        sr=None,
        latent: tuple | None = None,
        low: Tensor | None = None,
    ) -> Drawn:
        """``n`` samples of the finished run ``trained`` (:class:`~sde_diffusion.app.runs.TrainedRun`) by
        ``score`` (its model, guided or not) with ``sampler`` on ``grid``, seeded as
        :func:`~sde_diffusion.samplers.draw_samples` seeds them. What the run's config names beside
        it, loaded by the app: a cascade's second stage ``sr`` (a super-resolution ``TrainedRun``),
        a latent run's ``latent`` ``(codec, images)``; a super-resolution run's ``low``-resolution
        inputs ``(n, C, h, w)``. A task without samples refuses with :meth:`refusal`."""
        raise ValueError(self.refusal("sde-sample", trained.run_dir) or f"a {self.name} run has no samples")

    @abc.abstractmethod
    def summarize(self, run: Finished) -> dict:
        """Evaluate, sample, plot and print the summary line; return the summary (also written to
        ``summary.json``)."""


def training_summary(result, threads: int) -> dict:
    """The summary's training part, shared by every task."""
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


def write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


__all__ = ["PROG", "Drawn", "Finished", "Task", "say", "training_summary", "write_summary"]
