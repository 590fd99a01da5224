"""Running the apps inside the test process (as their console entry points do), for end-to-end tests
that would otherwise pay a fresh interpreter per run."""

from __future__ import annotations

import contextlib
import io
import sys

import pytest
import torch


def run_app(module: str, *args: str, cwd) -> tuple[int, str, str]:
    """Run ``sde-train``, ``sde-sample``, ``sde-eval`` or ``sde-ema`` (``module`` ``train``, ``sample``, ``eval``, ``ema``)
    with ``args`` in ``cwd``; returns the exit code and what it printed to stdout and stderr."""
    from sde_diffusion.cli import ema, sample, train
    from sde_diffusion.cli import eval as eval_app

    main = {"train": train.main, "sample": sample.main, "eval": eval_app.main, "ema": ema.main}[module]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", [f"sde-{module}", *args])
        mp.chdir(cwd)
        try:
            main()
        except SystemExit as exit_info:
            code = exit_info.code if isinstance(exit_info.code, int) else 1
    torch.set_num_threads(1)  # the apps set their own thread count
    return code, out.getvalue(), err.getvalue()


def train_config(*overrides: str):
    """The config ``sde-train`` composes from ``overrides`` (``conf/config.yaml``), without running it."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("sde_diffusion.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def sampler_section(name: str):
    """The ``sampler`` section ``sde-train sampler=<name>`` composes (the sampler's file with its grid
    from ``conf/sampler/grid/``), as a DictConfig with ``fn`` and ``grid``."""
    return train_config(f"sampler={name}").sampler
