"""The apps' run log: each line they print also goes to the run's log file (Hydra's job logging
writes the ``sde_diffusion`` logger into ``<run dir>/<app>.log``)."""

from __future__ import annotations

import logging

log = logging.getLogger("sde_diffusion")


def say(text: str) -> None:
    """Print one of the run's lines to stdout and append it to the run's log file (``<app>.log`` in
    the run directory, through Hydra's job logging: see ``conf/hydra/job_logging/run_log.yaml``)."""
    print(text, flush=True)
    log.info(text)
