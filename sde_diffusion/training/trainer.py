"""The training loop: denoising score matching with Adam, warm-up, clipping, EMA and exact resume."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._seeding import derive_seed
from .._shapes import check_data
from ..conditioning import Conditioning
from ..distributed import SINGLE, DistributedContext, all_reduce_mean
from ..losses import LearnedUncertainty, denoising_score_matching, plain_loss
from ..precision import accelerate, check_compile, check_precision
from ..sdes.base import SDE
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .ema import EMA
from .interrupt import StopRequest, TrainingInterrupted
from .metrics import MetricsLog
from .options import TrainOptions
from .posthoc_ema import SNAPSHOT_DIR, PostHocEMA, discard_snapshots_after, write_snapshot
from .schedules import lr_schedule as warmup_lr_schedule
from .streaming import stream_batches

log = logging.getLogger(__name__)

LossFn = Callable[..., Tensor]
"""``loss_fn(score_model, sde, x0, generator=...) -> (B,)`` per-sample losses. A loss with state (an
importance sampler's history: :class:`~sde_diffusion.losses.HybridLoss`) has ``state_dict`` and
``load_state_dict``, and its state is checkpointed with the run. A loss that is an ``nn.Module`` with
parameters (:class:`~sde_diffusion.losses.LearnedUncertainty`) has them trained with the model's."""

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
"""``optimizer(parameters) -> torch.optim.Optimizer``, e.g. ``functools.partial(torch.optim.AdamW, lr=1e-3)``."""

ScheduleFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
"""``lr_schedule(optimizer) -> LRScheduler``, stepped after every optimiser step (see :mod:`sde_diffusion.training.schedules`)."""


class Conditioner(Protocol):
    """Makes a micro-batch's conditioning from its clean rows ``x0`` ``(B, *dims)`` with the
    micro-batch's generator (:class:`~sde_diffusion.conditioning.SuperResolution`)."""

    def training(self, x0: Tensor, generator: torch.Generator | None = None) -> Conditioning: ...


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient; nothing was written for that step."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did: it ran ``steps - resumed_from`` steps, in ``seconds``, up to
    step ``steps``; ``steps_per_sec`` counts those steps alone."""

    steps: int
    seconds: float
    steps_per_sec: float
    last_loss: float
    resumed_from: int = 0

    @property
    def steps_run(self) -> int:
        return self.steps - self.resumed_from


class Trainer:
    """Trains ``score_model`` (a module computing ``score(x, t)``) on ``data`` ``(N, *dims)``.

    Each step draws a batch with replacement, evaluates ``loss_fn`` (default: denoising score
    matching with the eps weighting), takes an optimiser step with clipped gradient norm, steps the
    learning-rate schedule and updates the EMA of the weights. ``optimizer`` builds the optimiser
    from the parameters (default: Adam with ``options.lr``, fused over tensors); ``lr_schedule``
    builds the schedule on it (default: a linear warm-up over ``options.warmup_steps``, then
    constant; :func:`~sde_diffusion.training.schedules.lr_schedule` gives cosine and linear decay). All randomness after construction
    comes from one seeded ``torch.Generator`` whose state is checkpointed, so a resumed run repeats
    the uninterrupted one exactly.

    With a ``run_dir`` it writes ``metrics.jsonl`` and ``checkpoints/last.pt`` there.

    Micro-batches and processes. The global batch of ``options.batch_size`` rows, drawn by the
    shared generator (identical on every process), is cut into ``world_size x grad_accumulation``
    equal micro-batches. Micro-batch ``c`` of step ``k`` draws its noise (times, perturbations,
    label dropout) from a generator seeded ``derive_seed(seed, k, c)``, so the randomness of every
    sample depends on where it sits in the global batch, not on which process computes it: ``W``
    processes with ``A`` accumulation steps each train exactly as one process with ``W A``
    accumulation steps (up to the order of floating-point sums). Under torch.distributed (``dist``),
    the model runs inside DistributedDataParallel, which averages gradients across processes; only
    the main process writes metrics and checkpoints, and every process can resume from them.

    Class-conditional training: give ``labels`` ``(N,)`` int64, one per row of ``data``, and a
    ``score_model(x, t, y)`` whose ``n_classes = K`` exceeds every label (``K`` is its null label).
    Each batch then carries the labels of its rows, and each label is replaced by the null label with
    probability ``options.label_dropout`` (drawn from the same generator, so resume stays exact),
    which trains the unconditional score of classifier-free guidance (Ho & Salimans 2022, Alg. 1).
    The loss sees the plain score ``lambda x, t: score_model(x, t, y)``.

    Image-conditioned training (super-resolution, cascades): give a ``conditioner`` with
    ``conditioner.training(x0, generator) -> Conditioning`` (e.g.
    :class:`~sde_diffusion.conditioning.SuperResolution`): each micro-batch's conditioning is made
    from its clean rows, its augmentation noise drawn from the micro-batch's generator (after label
    dropout), and the loss sees ``lambda x, t: score_model(x, t, y, cond=cond)``.

    A loss with parameters (EDM2's learned uncertainty, :class:`~sde_diffusion.losses.LearnedUncertainty`)
    trains them by the same optimiser, after the model's parameters in its one parameter group; they
    are saved and restored with the loss's state, outside the EMA, the gradient clipping and its
    logged norm (which stay the model's), and averaged across processes as DDP averages the model's.

    ``row_weights`` ``(N,)`` weight each training row's loss (prior preservation:
    :func:`sde_diffusion.finetune.prior_weights`); the batch loss is the mean of the weighted values.

    Speed (:mod:`sde_diffusion.precision`): ``precision="bf16"`` or ``"fp16"`` runs the training
    forward pass under autocast (weights, gradients, optimiser and EMA stay float32); fp16 scales the
    loss with a ``torch.amp.GradScaler`` (checkpointed), which skips a step whose gradients overflow
    instead of stopping. ``compile=True`` trains through ``torch.compile`` of the network.
    """

    def __init__(
        self,
        score_model: nn.Module,
        sde: SDE,
        data: Tensor,
        options: TrainOptions,
        *,
        loss_fn: LossFn = denoising_score_matching,
        run_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        config: dict | None = None,
        labels: Tensor | None = None,
        dist: DistributedContext = SINGLE,
        optimizer: OptimizerFactory | None = None,
        lr_schedule: ScheduleFactory | None = None,
        conditioner: Conditioner | None = None,
        row_weights: Tensor | None = None,
        precision: str = "fp32",
        compile: bool = False,
    ):
        self.conditioner = conditioner
        self.precision = check_precision(precision, device)
        # fp16 only: bf16 has float32's exponent range, its gradients do not underflow
        self.scaler = torch.amp.GradScaler(torch.device(device).type, enabled=self.precision == "fp16")
        if row_weights is not None and (row_weights.shape != (data.shape[0],) or not bool((row_weights >= 0).all())):
            raise ValueError(
                f"row_weights must be ({data.shape[0]},) non-negative weights, one per training row; got shape {tuple(row_weights.shape)}"
            )
        self.row_weights = None if row_weights is None else row_weights.to(device=device, dtype=data.dtype)
        self.device = torch.device(device)
        self.model = score_model.to(self.device)
        self.sde = sde
        self.data = check_data(data, "training data")
        if options.data_on_device:
            self.data = self.data.to(self.device)
        elif self.data.device.type != "cpu":
            raise ValueError(f"train.data_on_device=false streams the data from host memory; they are on {self.data.device}")
        self._batches: Iterator[tuple[Tensor, Tensor]] | None = None  # streamed batches from step self._stream_from
        self._stream_from = -1
        self.labels = None if labels is None else _check_labels(labels, self.data, score_model).to(self.device)
        self.options = options
        self.loss_fn = loss_fn.to(self.device) if isinstance(loss_fn, nn.Module) else loss_fn
        # a loss's own parameters (a learned uncertainty u(sigma)): trained with the model's
        self._loss_params = [p for p in loss_fn.parameters() if p.requires_grad] if isinstance(loss_fn, nn.Module) else []
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.dist = dist
        self.seed = int(seed)
        self.micro_batches = dist.world_size * options.grad_accumulation
        if options.batch_size % self.micro_batches:
            raise ValueError(
                f"train.batch_size ({options.batch_size}) must be divisible by the number of micro-batches, "
                f"{dist.world_size} processes x train.grad_accumulation {options.grad_accumulation} = {self.micro_batches}"
            )
        self.ema: EMA | PostHocEMA = (
            EMA(self.model, options.ema_decay, warmup=options.ema_warmup)
            if options.ema == "standard"
            else PostHocEMA(self.model, options.ema_sigma_rel)
        )
        self._params = list(self.model.parameters())
        # foreach: one fused update over all tensors (measured 10 % faster per step on the CPU too)
        optimizer = optimizer or functools.partial(torch.optim.Adam, lr=options.lr, foreach=True)
        self.optimizer = optimizer([*self.model.parameters(), *self._loss_params])
        lr_schedule = lr_schedule or functools.partial(warmup_lr_schedule, warmup_steps=options.warmup_steps, total_steps=options.steps)
        self.scheduler = lr_schedule(self.optimizer)
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self._micro_generator = torch.Generator(device=self.device)  # re-seeded for every micro-batch
        self.step = 0
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl") if self.run_dir and dist.is_main else None
        self.on_step: list[Callable[[Trainer], None]] = []
        if options.resume:
            self._resume()
        # what the training forward pass calls: the model under autocast, in DDP, compiled
        self.net: nn.Module = accelerate(self.model, precision=self.precision, device=self.device)
        self._ddp: nn.parallel.DistributedDataParallel | None = None  # the same wrapper, when distributed
        if dist.active:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = self._ddp = nn.parallel.DistributedDataParallel(self.net, device_ids=device_ids)
        if check_compile(compile, self.device):
            self.net = cast(nn.Module, torch.compile(self.net))

    # ---------------------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / "checkpoints" / "last.pt" if self.run_dir else None

    @property
    def snapshot_dir(self) -> Path | None:
        """Where ``train.ema=posthoc`` keeps its snapshots: ``checkpoints/ema_snapshots``."""
        return self.run_dir / "checkpoints" / SNAPSHOT_DIR if self.run_dir else None

    @property
    def ema_model(self) -> nn.Module:
        """The score model with EMA weights (use it for sampling and evaluation): the EMA, or post-hoc
        EMA's first profile."""
        return self.ema.module

    def state(self) -> dict:
        rng: dict[str, Tensor | list[Tensor]] = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "config": self.config,
            **({"loss": self.loss_fn.state_dict()} if hasattr(self.loss_fn, "state_dict") else {}),
            **({"grad_scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}),
        }

    def save(self) -> Path | None:
        """Write ``checkpoints/last.pt`` (the main process only; None elsewhere)."""
        if self.checkpoint_path is None:
            raise ValueError("this Trainer has no run_dir to save checkpoints in")
        if not self.dist.is_main:
            return None
        return save_checkpoint(self.checkpoint_path, self.state())

    def save_snapshot(self) -> Path | None:
        """Write post-hoc EMA's snapshot of this step to :attr:`snapshot_dir` (the main process only)."""
        if not isinstance(self.ema, PostHocEMA) or self.snapshot_dir is None:
            raise ValueError("snapshots are kept by a Trainer with train.ema=posthoc and a run_dir")
        if not self.dist.is_main:
            return None
        return write_snapshot(self.snapshot_dir, self.ema.snapshot(self.step))

    def load_state(self, state: dict) -> None:
        self._check_loss_state(state)
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            if "scheduler" in state:
                self.scheduler.load_state_dict(state["scheduler"])
            if "loss" in state and hasattr(self.loss_fn, "load_state_dict"):  # a stateful loss (importance sampler, u(sigma))
                self.loss_fn.load_state_dict(state["loss"])
            if "grad_scaler" in state and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["grad_scaler"])
        except (RuntimeError, KeyError, ValueError) as err:
            first = str(err).strip().splitlines()[0]
            raise CheckpointError(
                f"the checkpoint does not fit this model and optimizer ({first}); was it written with another config?"
            ) from None
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step = int(state["step"])
        if "scheduler" not in state:  # written before schedules were checkpointed: replay it to the step
            with warnings.catch_warnings():  # torch warns of a schedule stepped before its optimiser
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                for _ in range(self.step):
                    self.scheduler.step()

    def _check_loss_state(self, state: dict) -> None:
        """Refuse a checkpoint whose loss had learned parameters (``loss.learned_weighting``) when this
        Trainer's has none, and the other way round, before the optimizer's state fails to fit."""
        saved = isinstance(state.get("loss"), dict) and "frequencies" in state["loss"]  # LearnedUncertainty's state
        learned = isinstance(self.loss_fn, LearnedUncertainty)
        if saved != learned:
            raise CheckpointError(
                f"the checkpoint was trained {'with' if saved else 'without'} a learned loss weighting, which this run "
                f"{'drops' if saved else 'adds'}: resume with loss.learned_weighting={str(saved).lower()}, as it was trained"
            )

    def _resume(self) -> None:
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            raise CheckpointError(
                f"train.resume=true but there is no checkpoint at {self.checkpoint_path}; point "
                f"hydra.run.dir at the earlier run's directory, or start afresh with train.resume=false"
            )
        self.load_state(load_checkpoint(self.checkpoint_path, map_location=self.device))
        if self.metrics:  # the main process's
            self.metrics.truncate_after(self.step)
        if isinstance(self.ema, PostHocEMA) and self.dist.is_main and self.snapshot_dir is not None:
            discard_snapshots_after(self.snapshot_dir, self.step)

    # ------------------------------------------------------------------------------- training
    def train_step(self) -> tuple[Tensor, Tensor]:
        """One optimiser step over the global batch; returns this process's mean loss and the
        gradient norm (unsynchronised tensors)."""
        opts = self.options
        idx, x0 = self._next_batch()
        self.optimizer.zero_grad(set_to_none=True)
        per_micro = opts.batch_size // self.micro_batches
        n_acc = opts.grad_accumulation
        losses = []
        for a in range(n_acc):
            c = self.dist.rank * n_acc + a  # this micro-batch's place in the global batch
            part = slice(c * per_micro, (c + 1) * per_micro)
            rows, x0_micro = idx[part], x0[part]
            gen = self._micro_generator.manual_seed(derive_seed(self.seed, self.step, c))
            last = a == n_acc - 1
            sync = contextlib.nullcontext() if last or self._ddp is None else self._ddp.no_sync()
            with sync:  # DDP averages gradients across processes on the last micro-batch only
                per_row = self.loss_fn(self._score_for(rows, gen, x0_micro), self.sde, x0_micro, generator=gen)
                micro = per_row.mean() if self.row_weights is None else (per_row * self.row_weights[rows]).mean()
                self.scaler.scale(micro if n_acc == 1 else micro / n_acc).backward()
            losses.append(micro.detach())
        loss = losses[0] if n_acc == 1 else torch.stack(losses).mean()
        if self._ddp is not None:  # the loss's parameters are outside DDP: average their gradients as it does
            for p in self._loss_params:
                if p.grad is not None:
                    p.grad.copy_(all_reduce_mean(p.grad, self.dist))
        self.scaler.unscale_(self.optimizer)  # true gradients for clipping and the norm (no-op unless fp16)
        if opts.grad_clip is not None:
            grad_norm = nn.utils.clip_grad_norm_(self._params, opts.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self._params if p.grad is not None]))
        # a NaN on any process reaches every process through the averaged gradient: all stop together.
        # Under fp16 an overflowing gradient is the scaler's business (it skips the step, lowers the scale)
        checked = loss if self.scaler.is_enabled() else loss + grad_norm
        if not bool(torch.isfinite(checked)):  # one check for both (a sum is finite iff both are, short of overflow)
            where = (
                f"; the last good checkpoint is {self.checkpoint_path}" if self.checkpoint_path and self.checkpoint_path.exists() else ""
            )
            raise NonFiniteLossError(
                f"training stopped at step {self.step + 1}: loss = {loss.item()}, gradient norm = "
                f"{grad_norm.item()} (not finite). Lower train.lr, keep train.grad_clip on, or check "
                f"the data for extreme values{where}"
            )
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used (logged)
        self.scaler.step(self.optimizer)  # optimizer.step(), skipped by fp16's scaler on overflow
        self.scaler.update()
        if self.scaler.is_enabled():  # the schedule follows the step count, also past a skipped first step (torch warns)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self.scheduler.step()
        else:
            self.scheduler.step()
        self.ema.update()
        self.step += 1
        return loss, grad_norm.detach()

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        """This step's global batch: row indices ``(B,)`` and rows ``(B, *dims)`` on the device. Resident
        data: indices from the Trainer's generator. Streamed data: the counter-based indices of
        :mod:`.streaming`, gathered ahead by the loader (restarted when the step is not the next one
        it holds, e.g. after a resume)."""
        opts = self.options
        if opts.data_on_device:
            idx = torch.randint(self.data.shape[0], (opts.batch_size,), generator=self.generator, device=self.device)
            return idx, self.data[idx]
        if self._batches is None or self._stream_from != self.step:
            self._batches = stream_batches(self.data, opts.batch_size, self.seed, self.step, self.device, workers=opts.data_workers)
        self._stream_from = self.step + 1
        return next(self._batches)

    def _score_for(self, idx: Tensor, generator: torch.Generator, x0: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """The score the loss trains on the rows ``x0 = data[idx]``: the model itself without labels; with
        labels, ``score(x, t) = model(x, t, y)`` for the rows' labels after label dropout."""
        if self.labels is None and self.conditioner is None:
            return self.net
        y = None if self.labels is None else self.labels[idx]
        if y is not None and self.options.label_dropout > 0:
            drop = torch.rand(y.shape, generator=generator, device=self.device) < self.options.label_dropout
            null_label = cast(int, self.model.n_classes)  # labels given: _check_labels found n_classes (K, the null label)
            y = torch.where(drop, null_label, y)
        if self.conditioner is None:
            return lambda x, t, **kwargs: self.net(x, t, y, **kwargs)
        cond = self.conditioner.training(x0, generator)
        return lambda x, t, **kwargs: self.net(x, t, y, cond=cond, **kwargs)

    def _stop_requested(self, stop: StopRequest) -> int | None:
        """The signal that asks training to stop, agreed by every process (each may have received
        it at another step, or not at all: the largest signal number seen anywhere wins)."""
        if not self.dist.active:
            return stop.signum
        flag = torch.tensor(float(stop.signum or 0), device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None

    def fit(self) -> TrainResult:
        """Train until ``options.steps``; checkpoint every ``checkpoint_every`` steps and at the end.

        With a ``run_dir``, SIGINT (Ctrl-C) and SIGTERM stop training after the step under way: the
        checkpoint of that step is written and :class:`TrainingInterrupted` is raised, so a resumed
        run continues exactly as if it had not been stopped. A second signal stops at once."""
        opts = self.options
        start_step, start = self.step, time.perf_counter()
        window_loss = torch.zeros((), device=self.device)
        window_start, window_time = self.step, start
        last_loss = math.nan
        snapshots = self.run_dir is not None and isinstance(self.ema, PostHocEMA)  # post-hoc EMA's
        snapshot_every = cast(int, opts.ema_snapshot_every)  # resolved by TrainOptions
        self.model.train()
        show = opts.progress and self.dist.is_main
        with (
            tqdm(total=opts.steps, initial=self.step, disable=not show, desc="train", mininterval=0.5) as bar,
            StopRequest(enabled=self.run_dir is not None) as stop,
        ):
            while self.step < opts.steps:
                loss, grad_norm = self.train_step()
                window_loss += loss
                bar.update(1)
                if self.step % opts.log_every == 0 or self.step == opts.steps:
                    now = time.perf_counter()
                    # every process reaches the logging steps together: the mean over processes is safe
                    last_loss = (all_reduce_mean(window_loss, self.dist) / (self.step - window_start)).item()
                    record = {
                        "step": self.step,
                        "loss": last_loss,
                        "grad_norm": grad_norm.item(),
                        "lr": self.last_lr,
                        "steps_per_sec": (self.step - window_start) / (now - window_time),
                        "elapsed_sec": now - start,
                    }
                    if self.metrics:
                        self.metrics.write(record)
                        log.info(
                            "step %d/%d: loss %.4f, grad norm %.3g, lr %.3g, %.1f steps/s",
                            self.step,
                            opts.steps,
                            last_loss,
                            record["grad_norm"],
                            record["lr"],
                            record["steps_per_sec"],
                        )
                    bar.set_postfix(loss=f"{last_loss:.4f}")
                    window_loss.zero_()
                    window_start, window_time = self.step, now
                if snapshots and (self.step % snapshot_every == 0 or self.step == opts.steps):
                    self.save_snapshot()
                if self.run_dir and (self.step % opts.checkpoint_every == 0 or self.step == opts.steps):
                    self.save()
                for callback in self.on_step:
                    callback(self)
                signum = self._stop_requested(stop)
                if signum is not None:
                    self.save()
                    raise TrainingInterrupted(signum, self.step, self.checkpoint_path if self.dist.is_main else None)
        seconds = time.perf_counter() - start
        done = self.step - start_step
        if self.run_dir and done == 0:
            self.save()
        return TrainResult(self.step, seconds, done / seconds if seconds > 0 else math.nan, last_loss, start_step)


def _check_labels(labels: Tensor, data: Tensor, model: nn.Module) -> Tensor:
    """Labels for class-conditional training: int64 ``(N,)`` in ``0 .. K - 1`` for a model with ``n_classes = K``."""
    n_classes = getattr(model, "n_classes", None)
    if n_classes is None:
        raise ValueError(
            f"labels were given but {type(model).__name__} is not class-conditional (no n_classes); build the "
            f"network with n_classes (e.g. UNet(..., n_classes=10)) or train without labels"
        )
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (data.shape[0],):
        what = f"{labels.dtype} of shape {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an int64 tensor of shape ({data.shape[0]},), one per training sample; got {what}")
    if bool(((labels < 0) | (labels >= n_classes)).any()):
        raise ValueError(
            f"labels must lie in 0..{n_classes - 1} for a model with n_classes={n_classes} (label {n_classes} is its "
            f"null label); got values from {int(labels.min())} to {int(labels.max())}: build the network with more classes"
        )
    return labels


@torch.no_grad()
def evaluate_loss(
    score_model: nn.Module,
    sde: SDE,
    data: Tensor,
    *,
    loss_fn: LossFn = denoising_score_matching,
    batch_size: int = 4096,
    seed: int = 0,
    conditioner: Conditioner | None = None,
) -> float:
    """Mean per-sample loss of ``score_model`` over ``data`` with a fixed seed (comparable across runs).
    An image-conditioned model gets each chunk's conditioning from ``conditioner`` as in training.

    Runs without building a graph for the parameters; losses that differentiate the score in ``x``
    (sliced score matching) enable gradients for that part themselves. A loss with a learned
    uncertainty weighting is evaluated without it (:func:`~sde_diffusion.losses.plain_loss`): the
    objective itself, comparable with a run trained without one."""
    loss_fn = plain_loss(loss_fn)
    device = next(score_model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    total = 0.0
    for chunk in data.split(batch_size):
        chunk = chunk.to(device)
        model: Callable = score_model
        if conditioner is not None:
            cond = conditioner.training(chunk, gen)
            model = functools.partial(score_model, cond=cond)
        total += loss_fn(model, sde, chunk, generator=gen).sum().item()
    return total / data.shape[0]
