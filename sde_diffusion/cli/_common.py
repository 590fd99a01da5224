"""What the entry points share: one-line errors, and checking group choices before Hydra starts."""

from __future__ import annotations

import contextlib
import importlib.resources
import re
import sys
import time
from typing import Iterator, NoReturn

import torch

from .. import distributed

_GROUP_CHOICE = re.compile(r"^(?P<group>[a-z_]+)=(?P<value>[A-Za-z0-9_.,\-]+)$")


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    """Print ``prog: error: message`` on one line to stderr and exit with ``code``."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def group_options() -> dict[str, list[str]]:
    """The config groups shipped in ``sde_diffusion.conf`` and their options."""
    root = importlib.resources.files("sde_diffusion.conf")
    groups = {}
    for entry in root.iterdir():
        if entry.is_dir() and not entry.name.startswith(("_", ".")):
            groups[entry.name] = sorted(p.name[:-5] for p in entry.iterdir() if p.name.endswith(".yaml"))
    return groups


def check_group_choices(prog: str, argv: list[str]) -> None:
    """Refuse ``group=unknown`` overrides with one line listing the valid options.

    Hydra's own message for this spans several lines; this check runs first. It is skipped when the
    user adds config directories of their own (``--config-dir``/``-cd``/``hydra.searchpath``), whose
    options only Hydra knows.
    """
    if any(a.startswith(("--config-dir", "-cd", "hydra.searchpath")) for a in argv):
        return
    groups = group_options()
    for arg in argv:
        match = _GROUP_CHOICE.match(arg)
        if not match or match["group"] not in groups:
            continue
        for value in match["value"].split(","):  # multirun lists: sde=vp,ve
            if value not in groups[match["group"]]:
                fail(
                    prog,
                    f"unknown {match['group']} '{value}'; choose one of: {', '.join(groups[match['group']])} "
                    f"(or set {match['group']}._target_ to your own class)",
                )


@contextlib.contextmanager
def torchrun_session(prog: str, argv: list[str], run_dir_pattern: str) -> Iterator[distributed.DistributedContext]:
    """Run an entry point's body under torchrun, or as a single process when torchrun did not start it.

    Under torchrun: join the process group and make every rank use one run directory, chosen by
    rank 0 (``time.strftime(run_dir_pattern)`` unless ``hydra.run.dir`` is given); only rank 0 lets
    Hydra write ``.hydra/`` and its log. ``argv`` is extended in place. The process group is shut
    down when the body ends, also on an error."""
    ctx = _join_torchrun(prog, argv, run_dir_pattern)
    try:
        yield ctx
    finally:
        distributed.shutdown(ctx)


def _join_torchrun(prog: str, argv: list[str], run_dir_pattern: str) -> distributed.DistributedContext:
    if not distributed.launched_by_torchrun():
        return distributed.SINGLE
    if any(a in ("-m", "--multirun") for a in argv):
        fail(prog, "torchrun runs one job; launch sweeps (-m) without torchrun, or with hydra/launcher=slurm")
    on_gpu = torch.cuda.is_available() and "device=cpu" not in argv
    ctx = distributed.init_distributed("cuda" if on_gpu else "cpu")
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        chosen = time.strftime(run_dir_pattern) if ctx.is_main else None
        argv.append(f"hydra.run.dir={distributed.broadcast_object(chosen, ctx)}")
    if not ctx.is_main:
        argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return ctx
