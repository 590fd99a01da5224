"""torch.distributed for the apps: one context object, set up from torchrun's environment.

Under ``torchrun --nproc_per_node=N`` every process sees ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``
and the rendezvous address; :func:`init_distributed` joins the process group (gloo on the CPU,
nccl on CUDA) and returns a :class:`DistributedContext`. Outside torchrun it returns the
single-process context, and every helper here is a no-op, so library code needs no branches.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and plots."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


SINGLE = DistributedContext()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str, timeout_minutes: float = 10.0) -> DistributedContext:
    """Join the process group torchrun described (once per process); single-process otherwise.

    ``timeout_minutes`` bounds how long a collective waits for a rank that died, so the survivors
    stop with an error instead of hanging.
    """
    if not launched_by_torchrun():
        return SINGLE
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    ctx = DistributedContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        # a CPU group for the meeting at the end (shutdown): monitored_barrier, which takes its own
        # timeout, exists for gloo only; made now, while every rank is here
        _meeting["group"] = None if backend == "gloo" else dist.new_group(backend="gloo")
    return ctx


_meeting: dict = {}
"""The gloo group of :func:`shutdown`'s meeting (None: the default group is gloo)."""

FINISH_TIMEOUT = datetime.timedelta(days=1)
"""How long a rank that finished waits at the end for the others (rank 0's evaluation and sampling,
which may take far longer than a collective's timeout)."""


def current() -> DistributedContext:
    """The context of an already initialised process group (single-process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


def broadcast_object(obj, ctx: DistributedContext):
    """``obj`` as rank 0 has it, on every rank."""
    if not ctx.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj, ctx: DistributedContext) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(t: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Mean of ``t`` over ranks (a new tensor)."""
    if not ctx.active:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / ctx.world_size


def shutdown(ctx: DistributedContext, *, wait: bool = False) -> None:
    """Leave the process group. ``wait``: first meet every rank (waiting up to :data:`FINISH_TIMEOUT`),
    so that no rank tears its connections down while another still works alone (rank 0's evaluation
    after training): a worker that left gloo early died with SIGABRT ("terminate called without an
    active exception") in about one 2-process job in five. Not after an error, when a rank may never come."""
    if ctx.active and dist.is_initialized():
        if wait:
            dist.monitored_barrier(group=_meeting.get("group"), timeout=FINISH_TIMEOUT)
        dist.destroy_process_group()
        _meeting.clear()
