"""``sde-train``: train a score model with the composed config, then sample, plot and summarise.

Writes into the Hydra run directory: ``checkpoints/last.pt``, ``metrics.jsonl``, ``loss.png``,
``samples.npz``, ``samples.png`` (samples beside held-out data), ``summary.json``, and ``.hydra/``.
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

from ..config import ConfigError, build_experiment
from ..distances import sliced_wasserstein
from ..plotting import loss_curve, plot_samples
from ..samplers.draw import DrawnSamples, draw_samples
from ..training import CheckpointError, NonFiniteLossError, Trainer, evaluate_loss
from ._common import check_group_choices, fail

PROG = "sde-train"


def _check_resume_matches(cfg: DictConfig, run_dir: Path) -> None:
    """On resume, the model, SDE and data must be those the checkpoint was trained with."""
    saved = run_dir / ".hydra" / "config.yaml"
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not cfg.train.resume or not ckpt.exists():
        return
    from ..training import load_checkpoint

    old = load_checkpoint(ckpt).get("config") or {}
    new = OmegaConf.to_container(cfg, resolve=True)
    changed = [k for k in ("sde", "model", "data", "loss") if k in old and old[k] != new.get(k)]
    if changed:
        raise ConfigError(
            f"train.resume=true but {', '.join(changed)} differ from the checkpoint's config in "
            f"{saved.parent}; resume with the same settings or start a new run"
        )


@torch.no_grad()
def _sample(exp, score_model, n: int, seed: int, progress: bool) -> DrawnSamples:
    """End-of-run samples, seeded as ``sde-sample`` seeds them: the same seed, sampler and ``n``
    reproduce them there."""
    return draw_samples(
        exp.sde, score_model, exp.sampler, exp.grid, exp.data.data_shape, n,
        batch_size=n, seed=seed, device=exp.device, progress=progress,
    )


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train, sample, plot and summarise; returns the summary (also written to ``summary.json``)."""
    exp = build_experiment(cfg)
    _check_resume_matches(cfg, run_dir)
    trainer = Trainer(
        exp.score_model,
        exp.sde,
        exp.data.train,
        exp.options,
        loss_fn=exp.loss_fn,
        run_dir=run_dir,
        device=exp.device,
        seed=int(cfg.seed),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    result = trainer.fit()

    ema = trainer.ema_model.eval()
    test = exp.data.test
    held_out_loss = evaluate_loss(ema, exp.sde, test, loss_fn=exp.loss_fn, seed=int(cfg.seed))
    drawn = _sample(exp, ema, int(cfg.n_samples), int(cfg.seed), exp.options.progress)
    samples, nfe, sample_sec = drawn.samples.float(), drawn.batch_nfe[0], drawn.seconds
    np.savez(run_dir / "samples.npz", samples=samples.numpy())
    n_cmp = min(samples.shape[0], test.shape[0])
    sw2 = sliced_wasserstein(samples[:n_cmp], test[:n_cmp], generator=torch.Generator().manual_seed(0))
    sampler_name = HydraConfig.get().runtime.choices.get("sampler", "sampler")
    plot_samples(samples, test, run_dir / "samples.png", title=f"{exp.data.name}: {type(exp.sde).__name__}, {sampler_name} ({nfe} NFE)")
    loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png")

    summary = {
        "steps": result.steps,
        "train_seconds": round(result.seconds, 3),
        "steps_per_sec": round(result.steps_per_sec, 2),
        "final_train_loss": result.last_loss,
        "held_out_loss_ema": held_out_loss,
        "sampler": sampler_name,
        "nfe": nfe,
        "sample_seconds": round(sample_sec, 3),
        "sliced_w2_vs_held_out": sw2,
        "n_samples": int(samples.shape[0]),
        "device": str(exp.device),
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{PROG}: {result.steps} steps in {result.seconds:.1f} s ({result.steps_per_sec:.0f} steps/s); "
        f"held-out loss (EMA) {held_out_loss:.4f}; {samples.shape[0]} samples by {sampler_name} "
        f"({nfe} NFE, {sample_sec:.1f} s), sliced W2 to held-out data {sw2:.4f}; wrote {run_dir}",
        flush=True,
    )
    return summary


@hydra.main(version_base=None, config_path="pkg://sde_diffusion.conf", config_name="config")
def _main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, run_dir)
    except (ConfigError, CheckpointError) as err:
        fail(PROG, str(err))
    except NonFiniteLossError as err:
        fail(PROG, str(err), code=3)


def main() -> None:
    check_group_choices(PROG, sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
