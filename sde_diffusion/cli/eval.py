"""``sde-eval``: negative log-likelihood of a finished training run through the probability-flow ODE,
or an upper bound on the NLL of the reverse-SDE (diffusion) model by its ELBO or VLB (``bound``);
the printed line and the record (``measures``) say which model the number is of, since neither
bounds the other (:data:`~sde_diffusion.likelihood.estimators.BOUND_MEANINGS`). What it computes is
the config group ``bound`` (``conf/bound/``), one :class:`~sde_diffusion.likelihood.estimators.NLLBound`
per option, which states what it needs of the network (fp32, no compiling) and of the run.

``sde-eval run_dir=<sde-train run dir>`` rebuilds the run's SDE, network (EMA weights) and data from
the run directory alone, evaluates the mean NLL of a split with
:func:`sde_diffusion.likelihood.evaluate_nll` (nats/dim, bits/dim for discrete data, standard errors
over points, probes and dequantization draws, NFE, wall time) and writes one result record, with
the settings that produced it, to two places:

- appended to ``<run_dir>/eval.json``, a JSON list of records, one per evaluation, so sweeps over
  runs and settings collect beside the checkpoint they evaluate. The list is rewritten atomically
  (temporary file, then rename) while holding a lock on the run directory, so concurrent
  evaluations of one run neither lose records nor leave a half-written file;
- ``eval.json`` in sde-eval's own Hydra run directory (``outputs/eval/<date>/<time>``), a list
  holding this record alone, beside ``.hydra/``.
"""

from __future__ import annotations

import datetime
import fcntl
import importlib.resources
import json
import os
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .. import distributed
from .._atomic import write_atomically
from .._log import say
from ..app.config import ConfigError, build_bound
from ..app.runs import load_run
from ..likelihood.estimators import NLLBound
from ..likelihood.evaluate import evaluate_nll
from ..precision import accelerate
from ._common import (
    check_composes,
    fail,
    latent_codec,
    override_key,
    refusals,
    require_score_run,
    set_threads,
    show_progress,
    speed_settings,
    speed_text,
    thread_text,
    torchrun_session,
)

PROG = "sde-eval"
RESULTS = "eval.json"
SPLITS = ("test", "train")
SETTINGS = ("batch_size", "divergence", "n_probes", "n_dequant", "rtol", "atol", "method", "eps", "seed", "backend")
"""Top-level config keys recorded with each result; the bound's own settings (resolved) and its name
follow from :func:`evaluate_nll`'s result."""


def _check_options(cfg: DictConfig) -> None:
    """Refuse what the library would not catch with a clear message: a missing run_dir, an unknown split,
    non-boolean progress. Counts, tolerances and method names are checked by ``evaluate_nll``."""
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError(f"run_dir is required: {PROG} run_dir=<the directory sde-train wrote>")
    if cfg.split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {cfg.split!r}")
    if not isinstance(cfg.progress, bool):
        raise ConfigError(f"progress must be true or false, got {cfg.progress!r}")


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}); move it aside to start a new list") from None
    if not isinstance(records, list):
        raise ConfigError(f"{path} holds a JSON {type(records).__name__}, not a list of evaluation records; move it aside")
    return records


def _write_records(path: Path, records: list[dict]) -> None:
    """Write ``records`` atomically (readable by all: results are meant to be shared)."""
    write_atomically(path, lambda f: f.write(json.dumps(records, indent=2) + "\n"), binary=False, mode=0o644)


def append_record(path: Path, record: dict) -> int:
    """Append ``record`` to the JSON list in ``path`` (created when absent); returns the new length.

    Read, append and atomic rewrite happen under an exclusive ``flock`` on ``path``'s directory, so
    evaluations running side by side (a parallel sweep) each add their record."""
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        records = _read_records(path)
        records.append(record)
        _write_records(path, records)
        return len(records)
    finally:
        os.close(dir_fd)  # closing releases the lock


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """Evaluate ``cfg.run_dir`` as configured, write the record to both ``eval.json`` files and print
    one line; returns the record."""
    _check_options(cfg)
    threads = set_threads(cfg.get("threads", "auto"))
    run_dir = Path(str(cfg.run_dir)).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir} is not a directory; pass the directory sde-train wrote")
    ctx = distributed.current()
    device = f"cuda:{ctx.local_rank}" if ctx.active and str(cfg.device) in ("auto", "cuda") and torch.cuda.is_available() else cfg.device
    trained = load_run(run_dir, device, weights=str(cfg.get("weights", "ema")), sigma_rel=cfg.get("sigma_rel"))
    require_score_run(trained, PROG)
    bound = build_bound(cfg)
    data = trained.data
    latent = latent_codec(trained.config, trained.device)
    if latent is not None:  # a latent diffusion run: LSGM's bound on the images' NLL
        codec, data = latent
        try:
            bound = bound.with_codec(codec)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    elif bound.needs_codec:
        raise ConfigError(
            f"bound={bound.name} is LSGM's bound of a latent diffusion run (experiment=latent_digits); this run works on pixels"
        )
    precision, compiled = speed_settings(cfg, trained.device)
    if precision != "fp32" and bound.needs_fp32:
        raise ConfigError(
            f"precision={precision}: the ODE likelihood (bound={bound.name}) runs the network in fp32, its adaptive solver "
            f"controls errors far below {precision}'s rounding; use precision=fp32, or bound=elbo/vlb"
        )
    if compiled and bound.needs_eager:
        raise ConfigError(
            f"compile=true: the ODE likelihood (bound={bound.name}) differentiates the network per probe through torch.vmap, "
            f"which compiled graphs do not support; use compile=false, or bound=elbo/vlb"
        )
    trained.score_model = accelerate(trained.score_model, precision=precision, compile=compiled, device=trained.device)
    if ctx.is_main:
        procs = f" x {ctx.world_size} processes" if ctx.active else ""
        say(
            f"{PROG}: {cfg.split} split of step {trained.step} of {trained.run_dir} on {trained.device}, "
            f"{thread_text(threads)}{procs}{speed_text(precision, compiled)}"
        )
    settings = {key: cfg[key] for key in SETTINGS}
    try:
        result = evaluate_nll(
            trained.sde,
            trained.score_model,
            getattr(data, cfg.split).to(trained.device),
            bound=bound,
            levels=data.levels,
            interval_width=data.interval_width,
            n_points=cfg.n_points,
            batch_size=cfg.batch_size,
            n_dequant=cfg.n_dequant,
            seed=cfg.seed,
            density=data.distribution,
            progress=show_progress(cfg.progress),
            shard=ctx,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None

    record = {
        "run_dir": str(trained.run_dir),
        "checkpoint_step": trained.step,
        "data": data.name,
        "split": cfg.split,
        "weights": str(cfg.get("weights", "ema")),
        "sigma_rel": cfg.get("sigma_rel"),
        **settings,
        **result,  # the bound's name and settings, resolved: the divergence replaces "auto"
        "device": str(trained.device),
        "out_dir": str(out_dir),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if not ctx.is_main:  # every process holds the gathered result; the main one writes it
        return record
    record["processes"], record["threads"] = ctx.world_size, threads
    n_records = append_record(trained.run_dir / RESULTS, record)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_records(out_dir / RESULTS, [record])
    say(f"{PROG}: {_summary_line(record, bound)}; appended record {n_records} to {trained.run_dir / RESULTS}, wrote {out_dir}")
    return record


def _pm(value: float, stderr: float | None, unit: str) -> str:
    return f"{value:.4f} {unit}" if stderr is None else f"{value:.4f} +- {stderr:.4f} {unit}"


def _summary_line(r: dict, bound: NLLBound) -> str:
    parts = [f"{bound.title} {_pm(r['nll_nats_per_dim'], r['nll_stderr'], 'nats/dim')}"]
    if r["bpd"] is not None:
        parts.append(_pm(r["bpd"], r["bpd_stderr"], "bits/dim"))
    text = (
        f"{', '.join(parts)} on {r['n_points']} {r['split']} points of {r['data']} (D={r['dim']}"
        f"{', ' + r['divergence'] + ' divergence' if r['divergence'] is not None else ''}) at step {r['checkpoint_step']}"
    )
    if r["data_nll_nats_per_dim"] is not None:
        text += f" (exact data NLL {r['data_nll_nats_per_dim']:.4f})"
    # what the number is of: the ODE's and the ELBO/VLB's are different models, neither bounds the other
    return text + f"; {r['nfe']:.0f} NFE per {bound.nfe_per}, {r['seconds']:.1f} s; bound={r['bound']}: {r['measures']}"


@hydra.main(version_base=None, config_path="pkg://sde_diffusion.conf", config_name="eval")
def _main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with refusals(PROG, out_dir, unreadable_checkpoint="evaluate another run, or train this one again"):
        run(cfg, out_dir)


def _check_keys(argv: list[str]) -> None:
    """Refuse overrides of keys ``eval.yaml`` does not have (``sde=ve``, ``model.net.hidden_dim=64``)
    in one line: the run's saved config fixes everything but the evaluation settings and the bound."""
    config = OmegaConf.create((importlib.resources.files("sde_diffusion.conf") / "eval.yaml").read_text())
    groups = [str(k) for entry in config.defaults if isinstance(entry, DictConfig) for k in entry if " " not in str(k)]
    known = [str(k) for k in config if k != "defaults"] + groups
    for arg in argv:
        key = override_key(arg)
        if "=" in arg and not arg.startswith(("-", "hydra")) and key.split(".", 1)[0] not in known:
            fail(
                PROG,
                f"{key} is not an sde-eval option; the training run's saved config (.hydra/config.yaml in "
                f"run_dir) fixes the SDE, model and data. Options: {', '.join(k for k in known if k != 'hydra')}",
            )


def main() -> None:
    _check_keys(sys.argv[1:])
    check_composes(PROG, "eval", sys.argv[1:])
    with torchrun_session(PROG, sys.argv, "outputs/eval/%Y-%m-%d/%H-%M-%S"):
        _main()


if __name__ == "__main__":
    main()
