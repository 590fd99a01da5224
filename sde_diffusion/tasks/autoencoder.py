"""task=autoencoder: the autoencoder of latent diffusion (Rombach et al. 2022)."""

from __future__ import annotations

import math

import torch

from ..app.plotting import image_grid, loss_curve
from ..latents import latent_scale
from ..losses.autoencoder import autoencoder_terms
from .base import PROG, Finished, Task, say, training_summary, write_summary


class AutoencoderTask(Task):
    """Held-out reconstruction NLL, KL and the VAE bound (bits/dim for discrete data), the scale factor of the latents (latents.json) and reconstructions (recon.png)."""

    name = "autoencoder"

    def describe(self, exp) -> str:
        return "an autoencoder"

    def refusal(self, prog: str, run_dir) -> str:
        return (
            f"{run_dir} holds an autoencoder (task=autoencoder), not a score model: train a latent diffusion model on it with "
            f"sde-train experiment=latent_digits autoencoder_dir={run_dir}"
        )

    @torch.no_grad()
    def summarize(self, run: Finished) -> dict:
        """task=autoencoder: held-out reconstruction NLL, KL and the VAE's bound (bits/dim for discrete
        data), the latents' scale factor (latents.json) and reconstructions (recon.png)."""
        exp, trainer, result, run_dir = run.exp, run.trainer, run.result, run.run_dir
        ae, data, levels = trainer.ema_model.eval(), exp.data, getattr(exp.loss_fn, "levels", None)
        gen = torch.Generator(device=exp.device).manual_seed(run.seed)
        test = data.test.to(exp.device)
        terms = [autoencoder_terms(ae, xb, levels=levels, generator=gen) for xb in test.split(1000)]
        recon, kl = (torch.cat([t[k] for t in terms]).double() for k in ("reconstruction", "kl"))
        d = test[0].numel()
        scale = latent_scale(ae, data.train.to(exp.device), seed=run.seed)
        scale.save(run_dir)
        shown = test[:32]
        pairs = torch.stack([shown, ae(shown)], 1).flatten(0, 1)
        image_grid(pairs.cpu(), run_dir / "recon.png", value_range=(float(test.min()), float(test.max())), max_images=pairs.shape[0],
                   title=f"{data.name}: held-out images and their reconstructions, in pairs")  # fmt: skip
        loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"{data.name}: autoencoder loss")
        ln2 = math.log(2)
        per_dim = (recon + kl) / d
        summary = {
            "task": "autoencoder",
            **training_summary(result, run.threads),
            "loss": repr(exp.loss_fn),
            "latent_shape": list(scale.latent_shape),
            "scale_factor": scale.scale_factor,
            "held_out_reconstruction_nats_per_dim": float(recon.mean() / d),
            "held_out_kl_nats_per_dim": float(kl.mean() / d),
            # the decoder's mean clamped to the data's range: a discretized decoder's outer levels take whole tails
            "held_out_reconstruction_rmse": float((ae(test).clamp(float(test.min()), float(test.max())) - test).pow(2).mean().sqrt()),
            # the VAE's bound -log P(x) <= E_q[-log p(x|z)] + KL: bits/dim of the discrete data (with the decoder on its levels)
            "held_out_vae_bound_bpd": float(per_dim.mean() / ln2) if levels else None,
            "held_out_vae_bound_bpd_stderr": float(per_dim.std() / math.sqrt(len(per_dim)) / ln2) if levels else None,
            "device": str(exp.device),
            "run_dir": str(run_dir),
        }
        write_summary(run_dir, summary)
        bound = f", VAE bound {summary['held_out_vae_bound_bpd']:.3f} bits/dim" if levels else ""
        say(
            f"{PROG}: {result.steps} steps in {result.seconds:.1f} s; held-out reconstruction {summary['held_out_reconstruction_nats_per_dim']:.4f} "
            f"nats/dim (RMSE {summary['held_out_reconstruction_rmse']:.4f}), KL {summary['held_out_kl_nats_per_dim']:.4f} nats/dim{bound}; "
            f"latents {scale.latent_shape}, scale factor {scale.scale_factor:.4f} (latents.json); wrote {run_dir}"
        )
        return summary
