"""What the entry points share: one-line errors that leave no run directory behind, checking group
choices before Hydra starts, threads, progress bars, and the run's log lines."""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from .. import distributed
from .._checks import check_range
from ..app.config import ConfigError, one_line, task_name
from ..precision import check_compile, check_precision
from ..training import CheckpointError, UnreadableCheckpointError

_GROUP_CHOICE = re.compile(r"^(?P<group>[a-z_]+(?:/[a-z_]+)?)=(?P<value>[A-Za-z0-9_.,\-]+)$")


def override_key(arg: str) -> str:
    """The key a command-line override sets: ``sde`` for ``sde=ve``, ``train.steps`` for ``++train.steps=10``."""
    return arg.split("=", 1)[0].lstrip("+~")


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    """Print ``prog: error: message`` on one line to stderr and exit with ``code``."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def group_options() -> dict[str, list[str]]:
    """The config groups shipped in ``sde_diffusion.conf`` and their options; a group inside another
    group's folder under its path (``sampler/grid``), except Hydra's own (``hydra/launcher``), whose
    options Hydra and its plugins add to."""
    root = importlib.resources.files("sde_diffusion.conf")
    groups = {}
    for entry in root.iterdir():
        if _is_group(entry):
            groups[entry.name] = _options(entry)
            if entry.name != "hydra":
                groups.update({f"{entry.name}/{sub.name}": _options(sub) for sub in entry.iterdir() if _is_group(sub)})
    return groups


def _is_group(entry) -> bool:
    return entry.is_dir() and not entry.name.startswith(("_", "."))


def _options(folder) -> list[str]:
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


HELP_RESOLVER = "sde_diffusion_group_options"
"""``${sde_diffusion_group_options:<group>}`` in an app's ``hydra.help.template`` (conf/config.yaml,
conf/sample.yaml) lists that config group's options, comma-separated."""


def register_help_resolver() -> None:
    """Register :data:`HELP_RESOLVER`; done when this module is imported, which every app's ``main``
    does before Hydra renders ``--help``."""
    OmegaConf.register_new_resolver(HELP_RESOLVER, lambda group: ", ".join(group_options()[group]), replace=True)


register_help_resolver()


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
        group = match["group"]
        own = (
            f"{group}=custom {group}._target_=your_module.YourClass"
            if "custom" in groups[group]
            else f"set {group.replace('/', '.')}._target_"
        )
        for value in match["value"].split(","):  # multirun lists: sde=vp,ve
            if value not in groups[group]:
                fail(prog, f"unknown {group} '{value}'; choose one of: {', '.join(groups[group])} (or {own} for your own class)")


_NOT_COMPOSED = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn", "hydra.searchpath", "--help", "-h",
                 "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--run", "-r")  # fmt: skip


def check_composes(prog: str, config_name: str, argv: list[str]) -> None:
    """Compose the app's config with the command line's overrides before Hydra runs, so that a value
    of the wrong type or a key the config does not have fails in one line (Hydra reports these on
    several lines, with a stack-trace hint) and before any run directory is made. A sweep
    (``-m``, ``sde=vp,ve``) is checked with the first value of each swept key; Hydra checks the rest
    as it launches the jobs. Skipped with the user's own config directories, which only Hydra knows."""
    if any(a.startswith(_NOT_COMPOSED) for a in argv):
        return
    overrides = [a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~")) and not override_key(a).startswith("hydra")]
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        first = []
        for o in parsed:
            assert o.input_line is not None  # parse_overrides sets it on every override it returns
            first.append(f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line)
        with initialize_config_module("sde_diffusion.conf", version_base=None):
            OmegaConf.resolve(compose(config_name=config_name, overrides=first))
    except Exception as err:  # Hydra and OmegaConf raise many types; each names the key and the value
        inner: BaseException = err
        while inner.__cause__ is not None:
            inner = inner.__cause__
        key = re.search(r"full_key: (\S+)", str(inner))
        append = re.search(r"To append to your config use (\S+)", str(err))  # a key the config does not have
        fix = f"; to add it, write {append[1]}" if append else ""
        fail(prog, (f"{key[1]}: {one_line(err)}" if key and key[1] not in one_line(err) else one_line(err)) + fix)


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
    except BaseException:
        distributed.shutdown(ctx)
        raise
    distributed.shutdown(ctx, wait=True)


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


def unused(run_dir: Path) -> bool:
    """True when ``run_dir`` holds nothing a run wrote: only Hydra's ``.hydra/`` and log files."""
    return run_dir.is_dir() and all(p.name == ".hydra" or (p.is_file() and p.suffix == ".log") for p in run_dir.iterdir())


def discard_unused_run_dir(run_dir: Path) -> None:
    """Delete a run directory that a refused command created (it holds only Hydra's files), and the
    parents Hydra made for it (``outputs/<date>``) that are left empty, up to the working directory.
    A directory that holds anything a run wrote (a checkpoint, samples, results) is never touched."""
    run_dir = run_dir.resolve()
    cwd = Path.cwd().resolve()
    if run_dir == cwd or run_dir in cwd.parents or not unused(run_dir):
        return
    _release_log_files(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.parents:
        if parent == cwd or cwd not in parent.parents:
            break
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break


def _release_log_files(run_dir: Path) -> None:
    """Detach and close the logging file handlers that write into ``run_dir`` (Hydra's job log), so
    that a line logged later in this process (an app run in-process, a notebook) neither fails on
    the deleted directory nor writes into it."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and run_dir in Path(handler.baseFilename).resolve().parents:
                logger.removeHandler(handler)
                handler.close()


@contextlib.contextmanager
def refusals(prog: str, run_dir: Path, *, unreadable_checkpoint: str) -> Iterator[None]:
    """Turn a refused command (bad config, unusable checkpoint) into one line and exit code 2,
    removing the run directory it created. ``unreadable_checkpoint`` is this app's advice for a
    truncated or altered checkpoint."""
    try:
        yield
    except UnreadableCheckpointError as err:
        discard_unused_run_dir(run_dir)
        fail(prog, f"{err}; {unreadable_checkpoint}")
    except (ConfigError, CheckpointError) as err:
        discard_unused_run_dir(run_dir)
        fail(prog, str(err))


def set_threads(value) -> int:
    """Apply the ``threads`` key: a positive number of CPU threads for torch's intra-op work, or
    ``auto`` for torch's own choice (one per core). Returns the number torch now uses."""
    if value != "auto":
        try:
            torch.set_num_threads(check_range("threads", value, low=1, integer=True, hint="or auto; 1 when other jobs share the machine"))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return torch.get_num_threads()


def speed_settings(cfg, device) -> tuple[str, bool]:
    """The checked ``precision`` and ``compile`` keys for ``device``; what this machine cannot run
    (bf16 where unsupported, compile without a compiler) or should not (fp16 on the CPU, which the
    library accepts) is a one-line ConfigError at start-up."""
    try:
        precision, compiled = check_precision(cfg.get("precision", "fp32"), device), check_compile(cfg.get("compile", False), device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if precision == "fp16" and torch.device(device).type == "cpu":  # runs, but no CPU has fast fp16 arithmetic
        raise ConfigError("precision=fp16 is for CUDA devices: on the CPU it trains 6-20x slower than fp32; use precision=bf16")
    return precision, compiled


def speed_text(precision: str, compiled: bool) -> str:
    """``", bf16, compiled"``: what the start line adds for settings other than the default."""
    return ("" if precision == "fp32" else f", {precision}") + (", compiled" if compiled else "")


def thread_text(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def show_progress(requested: bool) -> bool:
    """Whether to draw progress bars: when asked for, on a terminal (bars written to a log file
    leave their escape codes in it) and not in a job that a parallel launcher runs beside
    others (their bars would interleave)."""
    if not requested or not sys.stderr.isatty():
        return False
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN and "BasicLauncher" not in str(hc.launcher.get("_target_", "")):
            return False
    return True


def require_score_run(trained, prog: str) -> None:
    """Refuse a run whose model ``prog`` cannot use as a score model (a classifier, a cold diffusion
    restorer, an autoencoder; a super-resolution model outside sde-sample), in the words of its
    task (:meth:`sde_diffusion.tasks.Task.refusal`)."""
    from ..tasks import TASKS  # the tasks' summaries plot: loaded by the apps that need them

    refusal = TASKS[task_name(trained.config)].refusal(prog, trained.run_dir)
    if refusal is not None:
        raise ConfigError(refusal)


def latent_codec(cfg, device):
    """``(codec, images)`` of a latent diffusion run's ``autoencoder_dir`` (the autoencoder with its
    scale factor, and the image data set), or None for a run on pixels."""
    from omegaconf import OmegaConf

    from ..latents import load_codec

    path = OmegaConf.select(cfg, "autoencoder_dir", default=None, throw_on_missing=False)
    if path is None:
        return None
    if not Path(str(path)).expanduser().is_dir():
        raise ConfigError(f"autoencoder_dir={path} is not a directory; pass a finished sde-train task=autoencoder run")
    return load_codec(Path(str(path)).expanduser(), device)
