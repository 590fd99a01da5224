"""The latent space of a trained autoencoder (latent diffusion, Rombach et al. 2022): encoding with
LDM's scale factor, decoding, the data set of latents a diffusion model trains on.

LDM rescales the latents ``z`` to unit standard deviation, ``z_s = c z`` with ``c = 1 / std(z)``
measured on the training data (its Sec. 4.3 / App. G "scale factor"), so the diffusion model's SDE
and its defaults fit them as they fit images on ``[-1, 1]``. Densities change with the scale:
``log q_s(z_s | x) = log q(z | x) - d log c`` for ``d`` latent dimensions, and the diffusion model's
``log p_theta(z_s)`` is a density of ``z_s``; the LSGM bound
(:func:`sde_diffusion.likelihood.latent_bound`) uses both in the same units, so ``c`` cancels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ._checks import check_range
from .data.dataset import Dataset
from .losses.autoencoder import decoder_log_prob

LATENTS_FILE = "latents.json"
"""The file of an autoencoder run that holds its latents' scale factor."""


@dataclass(frozen=True)
class LatentScale:
    """LDM's scale factor ``c = 1 / std(z)`` of an autoencoder's latents, measured on its training data."""

    scale_factor: float
    latent_shape: tuple[int, ...]

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / LATENTS_FILE
        path.write_text(json.dumps({"scale_factor": self.scale_factor, "latent_shape": list(self.latent_shape)}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> LatentScale:
        path = Path(run_dir) / LATENTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: autoencoder_dir must be a finished sde-train task=autoencoder run")
        raw = json.loads(path.read_text())
        return cls(float(raw["scale_factor"]), tuple(int(d) for d in raw["latent_shape"]))


@torch.no_grad()
def latent_scale(autoencoder, train: Tensor, *, seed: int = 0, batch_size: int = 1000) -> LatentScale:
    """``1 / std`` of latents ``z ~ q(z | x)`` of every training image (one draw each, seeded), the
    std taken over all latent elements (LDM's scalar scale factor)."""
    gen = torch.Generator(device=train.device).manual_seed(seed)
    zs = []
    for xb in train.split(batch_size):
        mu, log_var = autoencoder.encode(xb)
        zs.append(mu + (0.5 * log_var).exp() * torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype))
    std = float(torch.cat(zs).double().std())
    return LatentScale(1.0 / std, tuple(autoencoder.latent_shape))


class LatentCodec:
    """An autoencoder with its scale factor: images ``(B, C, H, W)`` <-> scaled latents ``(B, *latent_shape)``.

    Args:
        autoencoder: an :class:`~sde_diffusion.Autoencoder` (``encode``, ``decode``), in eval mode.
        scale: its :class:`LatentScale`.
        levels: the data's ``K`` levels (the decoder's discretization), None for continuous data.
    """

    def __init__(self, autoencoder, scale: LatentScale, levels: int | None):
        self.autoencoder, self.scale, self.levels = autoencoder, scale, levels
        self.c = scale.scale_factor
        self.latent_shape = tuple(scale.latent_shape)
        self.dims = math.prod(self.latent_shape)

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One draw ``z_s = c z``, ``z ~ q(z | x)``, and ``log q_s(z_s | x)`` ``(B,)`` in nats (the
        density of the scaled latent: ``log q(z | x) - d log c``)."""
        mu, log_var = self.autoencoder.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + (0.5 * log_var).exp() * eps
        log_q = -0.5 * (eps.pow(2) + log_var).flatten(1).sum(1) - 0.5 * self.dims * math.log(2 * math.pi)
        return self.c * z, log_q - self.dims * math.log(self.c)

    def decode(self, z_s: Tensor) -> Tensor:
        """The image ``(B, C, H, W)`` of scaled latents ``z_s``: the decoder's mean, clamped to the
        images' interval ``[-1, 1]`` for discrete data (whose outer levels take the Gaussian's whole
        tails, so the trained mean of a black pixel lies far below -1)."""
        mean = self.autoencoder.decode(z_s / self.c)[0]
        return mean if self.levels is None else mean.clamp(-1.0, 1.0)

    def log_p_x(self, x: Tensor, z_s: Tensor) -> Tensor:
        """``log p(x | z)`` ``(B,)`` in nats: the decoder discretized to the data's levels (a
        log-probability of discrete data), or its density for continuous data."""
        return decoder_log_prob(self.autoencoder, x, z_s / self.c, self.levels)


def load_codec(autoencoder_dir: str | Path, device: str | torch.device = "cpu") -> tuple[LatentCodec, Dataset]:
    """The codec of a finished ``sde-train task=autoencoder`` run and the image data it was trained on."""
    from .app.config import ConfigError, task_name
    from .app.runs import load_run  # runs builds models from configs, which build data sets: imported when needed

    run = load_run(autoencoder_dir, device)
    if task_name(run.config) != "autoencoder":
        raise ConfigError(f"autoencoder_dir={autoencoder_dir} is not an autoencoder run: train one with sde-train task=autoencoder")
    try:
        scale = LatentScale.load(run.run_dir)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    return LatentCodec(run.score_model.eval(), scale, run.data.levels), run.data


@torch.no_grad()
def latent_dataset(autoencoder_dir: str, draws: int = 1, seed: int = 0) -> Dataset:
    """The scaled latents ``z_s ~ q_s(z_s | x)`` of the autoencoder run's training and held-out images
    (``draws`` draws per training image, one per held-out image, seeded), with their labels: the data
    of a latent diffusion model (``experiment=latent_digits``). Continuous data (``levels`` None)."""
    if autoencoder_dir is None:
        raise ValueError("latent data need autoencoder_dir=<a finished sde-train task=autoencoder run> (experiment=latent_digits)")
    draws = check_range("draws", draws, low=1, integer=True, hint="latent draws per training image")
    codec, images = load_codec(autoencoder_dir, "cpu")
    gen = torch.Generator().manual_seed(seed)

    def encode(x: Tensor) -> Tensor:
        return torch.cat([codec.encode(xb, gen)[0] for xb in x.split(1000)]).float()

    train = torch.cat([encode(images.train) for _ in range(draws)])
    labels = None if images.train_labels is None else images.train_labels.repeat(draws)
    return Dataset(
        train,
        encode(images.test),
        f"{images.name} latents",
        train_labels=labels,
        test_labels=images.test_labels,
        n_classes=images.n_classes,
    )


@torch.no_grad()
def decode_latents(codec, latents: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The decoder's mean images of scaled latents ``(N, *latent_shape)``, on the CPU."""
    device = next(codec.autoencoder.parameters()).device
    return torch.cat([codec.decode(zb.to(device)).cpu() for zb in latents.split(batch_size)])
