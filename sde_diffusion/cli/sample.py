"""``sde-sample``: draw samples from a finished training run with any sampler of ``conf/sampler/``.

``sde-sample run_dir=<sde-train run dir> sampler=<name> n_samples=<N>`` rebuilds the run's SDE,
network and data from its saved config, loads the EMA weights, and writes into its own Hydra run
directory ``samples.npz``, ``samples.png`` and ``sample_summary.json`` (and ``.hydra/``).

Seeding is that of :func:`sde_diffusion.samplers.draw_samples`: deterministic samplers give the
same samples for every ``batch_size``; stochastic ones draw their step noise per batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ..config import ConfigError, build_sampler
from ..plotting import plot_samples
from ..samplers.draw import draw_samples
from ..training import CheckpointError
from ._common import check_group_choices, fail, group_options
from ._run import load_trained_run

PROG = "sde-sample"
def _check_options(cfg: DictConfig) -> tuple[int, int, int, bool]:
    """``(n_samples, batch_size, seed, progress)`` from the config, each validated."""
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError("run_dir is required: sde-sample run_dir=<the directory sde-train wrote> sampler=<name>")
    values = []
    for key, low in (("n_samples", 1), ("batch_size", 1), ("seed", 0)):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"{key} must be an integer >= {low}, got {v!r}")
        values.append(v)
    if not isinstance(cfg.get("progress"), bool):
        raise ConfigError(f"progress must be true or false, got {cfg.get('progress')!r}")
    return (*values, cfg.progress)


def _nfe_text(nfe: Tensor) -> str:
    lo, hi = int(nfe.min()), int(nfe.max())
    return f"{lo} NFE" if lo == hi else f"{lo}-{hi} NFE (mean {nfe.double().mean():.1f})"


def run(cfg: DictConfig, out_dir: Path, *, sampler_name: str = "sampler") -> dict:
    """Load ``cfg.run_dir``, draw ``cfg.n_samples`` samples, write the files into ``out_dir`` and
    print one line; returns the summary (also written to ``sample_summary.json``)."""
    n, batch_size, seed, progress = _check_options(cfg)
    run_dir = Path(str(cfg.run_dir)).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir} is not a directory; pass the directory sde-train wrote")
    trained = load_trained_run(run_dir, cfg.device)
    sampler, grid = build_sampler(cfg)
    try:
        drawn = draw_samples(
            trained.sde,
            trained.score_model,
            sampler,
            grid,
            trained.data.data_shape,
            n,
            batch_size=batch_size,
            seed=seed,
            device=trained.device,
            progress=progress,
        )
    except ValueError as err:
        raise ConfigError(f"sampler={sampler_name}: {err}") from None

    samples = drawn.samples.float()
    arrays = {
        "samples": samples.numpy(),
        "nfe": np.int64(sum(drawn.batch_nfe)),
        "nfe_per_sample": drawn.nfe.numpy(),
        "seconds": np.float64(drawn.seconds),
    }
    if trained.data.scale is not None:
        arrays["samples_raw"] = trained.data.unstandardize(samples).numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "samples.npz", **arrays)
    nfe = _nfe_text(drawn.nfe)
    title = f"{trained.data.name}: {type(trained.sde).__name__}, {sampler_name} ({nfe})"
    plot = plot_samples(samples, trained.data.test, out_dir / "samples.png", title=title)
    n_bad = int((~torch.isfinite(samples.reshape(n, -1))).any(dim=1).sum())

    summary = {
        "run_dir": str(trained.run_dir),
        "checkpoint_step": trained.step,
        "sampler": sampler_name,
        "n_samples": n,
        "batch_size": batch_size,
        "seed": seed,
        "device": str(trained.device),
        "nfe_per_batch": drawn.batch_nfe,
        "nfe_total": int(arrays["nfe"]),
        "seconds": round(drawn.seconds, 3),
        "nonfinite_samples": n_bad,
        "plot": plot.name if plot else None,
        "out_dir": str(out_dir),
    }
    (out_dir / "sample_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    warning = f"; WARNING: {n_bad} samples are not finite" if n_bad else ""
    print(
        f"{PROG}: {n} samples by {sampler_name} from step {trained.step} of {trained.run_dir}: {nfe} per "
        f"sample ({summary['nfe_total']} batched evaluations), {drawn.seconds:.2f} s{warning}; wrote {out_dir}",
        flush=True,
    )
    return summary


def _check_only_sampler_group(argv: list[str]) -> None:
    """The run fixes sde, model, data, loss and train; refuse ``sde=ve``, ``data.path=...`` and the
    like in one line (Hydra's own message for them spans several)."""
    fixed = set(group_options()) - {"sampler"}
    for arg in argv:
        key = arg.lstrip("+~").split("=", 1)[0]
        if "=" in arg and key.split(".", 1)[0] in fixed:
            fail(
                PROG,
                f"{key} is fixed by the training run's saved config (.hydra/config.yaml in run_dir); "
                f"sde-sample chooses only sampler=<name> and its options",
            )


@hydra.main(version_base=None, config_path="pkg://sde_diffusion.conf", config_name="sample")
def _main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    try:
        run(cfg, Path(hydra_cfg.runtime.output_dir), sampler_name=hydra_cfg.runtime.choices.get("sampler", "sampler"))
    except (ConfigError, CheckpointError) as err:
        fail(PROG, str(err))


def main() -> None:
    check_group_choices(PROG, sys.argv[1:])
    _check_only_sampler_group(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
