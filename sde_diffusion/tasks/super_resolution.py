"""Super-resolution (SR3, Saharia et al. 2022; noise-conditioning augmentation, Ho et al. 2022): a score model conditioned on a low-resolution image."""

from __future__ import annotations

import numpy as np
import torch

from ..app.plotting import image_grid, loss_curve
from ..conditioning import bicubic_upsample, downsample
from ..image_metrics import super_resolution_scores
from ..samplers.draw import super_resolve
from ..training import evaluate_loss
from .base import PROG, Drawn, Finished, Task, say, training_summary, write_summary


class SuperResolutionTask(Task):
    """Held-out images super-resolved (PSNR/SSIM beside bicubic) and samples.png."""

    name = "super_resolution"

    def refusal(self, prog: str, run_dir) -> str | None:
        if prog == "sde-sample":  # it super-resolves low-resolution images
            return None
        return (
            f"{run_dir} holds a super-resolution model, whose likelihood is conditional on a low-resolution image; "
            f"{prog} evaluates unconditional models only (its PSNR/SSIM are in summary.json; sde-sample run_dir=... super-resolves)"
        )

    def draw(self, trained, score, sampler, grid, n, *, batch_size, seed, progress, sr=None, latent=None, low=None) -> Drawn:
        """The ``low``-resolution images ``(n, C, h, w)`` super-resolved (they are the inputs)."""
        if low is None:
            raise ValueError("a super-resolution run draws from low-resolution images: pass low=(n, C, h, w)")
        drawn = trained.super_resolve(low, batch_size=batch_size, seed=seed, progress=progress, score=score, sampler=(sampler, grid))
        return Drawn(drawn, trained.data.test, inputs=low)

    def summarize(self, run: Finished) -> dict:
        """Super-resolution: the held-out images super-resolved from their low-resolution versions (one
        sample each, the config's sampler), PSNR/SSIM against the truth beside bicubic upsampling, and
        samples.png (low-res | bicubic | super-resolved | truth)."""
        exp, trainer, result, run_dir = run.exp, run.trainer, run.result, run.run_dir
        ema, conditioner = trainer.ema_model.eval(), exp.conditioner
        test = exp.data.test
        held_out_loss = evaluate_loss(ema, exp.sde, test, loss_fn=exp.loss_fn, seed=run.seed, conditioner=conditioner)
        n = min(run.n_samples, test.shape[0])
        truth = test[:n]
        low = downsample(truth, conditioner.factor)
        sampler_name = run.sampler_name
        drawn = super_resolve(
            exp.sde,
            ema,
            exp.sampler,
            exp.grid,
            conditioner,
            low,
            batch_size=n,
            seed=run.seed,
            device=exp.device,
            progress=exp.options.progress,
        )
        samples = drawn.samples.float()
        data_range = float(test.max() - test.min())
        scores = super_resolution_scores(samples, truth, low, conditioner.factor, data_range)
        np.savez(run_dir / "samples.npz", samples=samples.numpy(), low_res=low.numpy(), truth=truth.numpy())
        shown = min(n, 16)
        bicubic = bicubic_upsample(low[:shown], (truth.shape[-2], truth.shape[-1]))
        nearest = torch.nn.functional.interpolate(low[:shown], size=(truth.shape[-2], truth.shape[-1]), mode="nearest")
        rows = torch.stack([nearest, bicubic, samples[:shown], truth[:shown]], 1).flatten(0, 1)  # each row: one held-out image
        image_grid(
            rows,
            run_dir / "samples.png",
            value_range=(float(test.min()), float(test.max())),
            max_images=rows.shape[0],
            title=f"{exp.data.name}: x{conditioner.factor} super-resolution ({sampler_name})\neach group of 4: low-res | bicubic | sample | truth",
        )
        loss_curve(
            run_dir / "metrics.jsonl",
            run_dir / "loss.png",
            held_out={"held-out loss, EMA weights": held_out_loss},
            title=f"{exp.data.name}: super-resolution",
        )
        summary = {
            "task": "super_resolution",
            **training_summary(result, run.threads),
            "conditioning": repr(conditioner),
            "held_out_loss_ema": held_out_loss,
            "sampler": sampler_name,
            "nfe": drawn.batch_nfe[0],
            "sample_seconds": round(drawn.seconds, 3),
            "n_images": n,
            **scores,
            "device": str(exp.device),
            "run_dir": str(run_dir),
        }
        write_summary(run_dir, summary)
        sr, bc = scores["super_resolved"], scores["bicubic"]
        say(
            f"{PROG}: {result.steps} steps in {result.seconds:.1f} s; {n} held-out images super-resolved x{conditioner.factor} by {sampler_name}: "
            f"PSNR {sr['psnr']:.2f} dB, SSIM {sr['ssim']:.3f} (bicubic {bc['psnr']:.2f} dB, {bc['ssim']:.3f}); wrote {run_dir}"
        )
        return summary
