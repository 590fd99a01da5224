"""``sde-ema``: choose the EMA of a finished ``train.ema=posthoc`` run after training (EDM2's post-hoc
EMA, Karras et al. 2024, Sec. 3): reconstruct the power-function average of each relative width
``sigma_rel`` from the run's snapshots (:mod:`~sde_diffusion.training.posthoc_ema`), evaluate its
held-out loss (the loss the run trained with, as ``sde-train``'s summary computes it), and pick the
width with the lowest.

``sde-ema run_dir=<run> sigma_rel=[0.03,0.05,0.07,0.1,0.15]`` prints one line per width and the best;
``sigma_rel=0.07`` evaluates one. It writes the best width's weights to
``<run_dir>/checkpoints/posthoc_ema/sigma_rel-<width>.pt`` (a verified checkpoint whose ``model``
entry is a ``state_dict``, for use outside the toolkit) and the sweep, beside the loss of the run's
EMA weights, to ``<run_dir>/posthoc_ema.json``. ``sde-sample`` and ``sde-eval`` take any width with
``weights=posthoc sigma_rel=<width>`` (they reconstruct it the same way).
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from .._atomic import write_atomically
from .._checks import check_range
from .._log import say
from ..app.config import ConfigError, build_loss
from ..app.runs import load_run, posthoc_models
from ..training import evaluate_loss, save_checkpoint
from ..training.posthoc_ema import check_sigma_rel
from ._common import check_composes, refusals, require_score_run, set_threads, thread_text

PROG = "sde-ema"
RESULTS = "posthoc_ema.json"


def _widths(cfg: DictConfig) -> list[float]:
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError(f"run_dir is required: {PROG} run_dir=<the directory sde-train train.ema=posthoc wrote>")
    widths = list(cfg.sigma_rel) if isinstance(cfg.sigma_rel, ListConfig) else [cfg.sigma_rel]
    if not widths:
        raise ConfigError("sigma_rel must be a width or a list of widths, e.g. sigma_rel=[0.05,0.07,0.1]")
    try:
        return [check_sigma_rel(width) for width in widths]
    except ValueError as err:
        raise ConfigError(str(err)) from None


def run(cfg: DictConfig) -> dict:
    """Reconstruct and evaluate each width of ``cfg.sigma_rel``, write the best one's weights and the
    sweep, print one line per width and the choice; returns the sweep's record."""
    widths = _widths(cfg)
    threads = set_threads(cfg.get("threads", "auto"))
    run_dir = Path(str(cfg.run_dir)).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir} is not a directory; pass the directory sde-train wrote")
    try:
        n_points = check_range("n_points", cfg.n_points, low=1, integer=True, optional=True, hint="null evaluates the whole split")
        seed = check_range("seed", cfg.seed, low=0, integer=True)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    trained = load_run(run_dir, cfg.device)
    require_score_run(trained, PROG)
    if OmegaConf.select(trained.config, "train.ema", default="standard") != "posthoc":
        raise ConfigError(f"{trained.run_dir} was trained with train.ema=standard; post-hoc EMA needs a run trained with train.ema=posthoc")
    loss_fn = build_loss(trained.config, trained.data)
    held_out = trained.data.test[:n_points]
    which = f"{'widths' if len(widths) > 1 else 'width'} {', '.join(f'{w:g}' for w in widths)}"
    say(
        f"{PROG}: held-out loss of post-hoc EMA {which} of step {trained.step} of {trained.run_dir} on {trained.device}, {thread_text(threads)}"
    )

    def loss_of(model) -> float:
        return evaluate_loss(model, trained.sde, held_out, loss_fn=loss_fn, seed=seed, conditioner=trained.conditioner)

    ema_loss = loss_of(trained.score_model)
    raw_loss = loss_of(load_run(run_dir, cfg.device, weights="raw").score_model)  # the last step's weights, for scale
    rows, best = [], None
    for width, (reconstruction, model) in zip(widths, posthoc_models(trained, widths), strict=True):
        row = {"sigma_rel": float(width), "held_out_loss": loss_of(model), "kernel_error": reconstruction.kernel_error}
        say(f"{PROG}: sigma_rel {width:g}: held-out loss {row['held_out_loss']:.5f} (kernel fit error {row['kernel_error']:.1e})")
        rows.append(row)
        if best is None or row["held_out_loss"] < best[0]["held_out_loss"]:
            best = (row, model)
    assert best is not None  # widths is not empty
    row, model = best
    weights = save_checkpoint(
        trained.run_dir / "checkpoints" / "posthoc_ema" / f"sigma_rel-{row['sigma_rel']:.3f}.pt",
        {"model": model.state_dict(), "sigma_rel": row["sigma_rel"], "step": trained.step},
    )
    record = {
        "run_dir": str(trained.run_dir),
        "step": trained.step,
        "n_points": int(held_out.shape[0]),
        "seed": seed,
        "held_out_loss_ema": ema_loss,
        "held_out_loss_raw": raw_loss,
        "sweep": rows,
        "best_sigma_rel": row["sigma_rel"],
        "weights": str(weights),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomically(trained.run_dir / RESULTS, lambda f: f.write(json.dumps(record, indent=2) + "\n"), binary=False, mode=0o644)
    say(
        f"{PROG}: best sigma_rel {row['sigma_rel']:g}, held-out loss {row['held_out_loss']:.5f} (the run's EMA weights: "
        f"{ema_loss:.5f}, the raw weights: {raw_loss:.5f}); wrote {weights} and {trained.run_dir / RESULTS}; sample it with "
        f"sde-sample run_dir={trained.run_dir} weights=posthoc sigma_rel={row['sigma_rel']:g}{_edge_note(widths, row, raw_loss)}"
    )
    return record


def _edge_note(widths: list[float], best: dict, raw_loss: float) -> str:
    """What to try when the sweep's best width is one of its ends (the optimum may lie beyond), or when
    the raw weights beat every average (a short run, whose early weights every average still holds)."""
    note = ""
    if len(widths) > 1 and best["sigma_rel"] in (min(widths), max(widths)):
        side, other = ("narrowest", "narrower") if best["sigma_rel"] == min(widths) else ("widest", "wider")
        note = f"; it is the sweep's {side} width, so a {other} one may be better still (sigma_rel=[...] sets the sweep)"
    if raw_loss < best["held_out_loss"]:
        note += "; the raw weights beat every average (train longer, or weights=raw in sde-sample and sde-eval)"
    return note


@hydra.main(version_base=None, config_path="pkg://sde_diffusion.conf", config_name="ema")
def _main(cfg: DictConfig) -> None:
    with refusals(PROG, Path(HydraConfig.get().runtime.output_dir), unreadable_checkpoint="its snapshots or checkpoint are damaged"):
        run(cfg)


def main() -> None:
    check_composes(PROG, "ema", sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
