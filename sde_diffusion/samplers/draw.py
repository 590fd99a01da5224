"""Drawing many samples in batches, with seeds that make a sample independent of its batch.

The prior draw ``x_T`` of sample ``i`` comes from block ``i // PRIOR_BLOCK`` of
:meth:`SDE.prior_sample`, each block drawn on the CPU by its own generator seeded
``stream_seed(seed, PRIOR, block)``, and the sampler's step noise comes from per-sample streams
(:class:`~sde_diffusion._noise.PerSampleNoise` seeded ``stream_seed(seed, NOISE, 0)``, row ``i``
from sample ``i``'s own stream; EDM's per-sample generators, Karras et al. 2022). So every sampler
on the driver, deterministic or stochastic, gives each sample the same noise for every
``batch_size`` and device; the samples agree bitwise when the network's outputs do not depend on
the batch they are computed in (elementwise scores; on the CPU, dense layers usually), else up to
floating-point round-off. torchsde's Brownian motion is one per batch (torchsde_sampler).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._noise import PerSampleNoise
from .._seeding import derive_seed
from ..conditioning import ConditionedScore, SuperResolution
from ..sdes.base import SDE
from ..types import ScoreFn
from .base import SamplerOutput

PRIOR_BLOCK = 256
"""Samples per independently seeded block of prior noise."""
PRIOR, NOISE, CONDITIONING = 0, 1, 2
"""Stream numbers of :func:`stream_seed`: the prior draw, the samplers' step noise and the
augmentation noise of a conditioning image (:func:`super_resolve`)."""


def stream_seed(seed: int, stream: int, index: int) -> int:
    """The seed of block or batch ``index`` of ``stream`` (see :func:`sde_diffusion._seeding.derive_seed`)."""
    return derive_seed(seed, stream, index)


class PriorBlocks:
    """``x_T`` for any range of sample indices, independent of how the range is split into batches.

    Block ``k`` holds samples ``k B .. (k + 1) B - 1`` (``B = PRIOR_BLOCK``), drawn by
    ``sde.prior_sample((B, *dims))`` on the CPU from a generator seeded ``stream_seed(seed, PRIOR, k)``.
    The last block drawn is kept, so consecutive batches draw each block once.
    """

    def __init__(self, sde: SDE, data_shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32):
        self.sde, self.data_shape, self.seed, self.dtype = sde, tuple(data_shape), int(seed), dtype
        self._cached: tuple[int, Tensor] | None = None

    def _block(self, k: int) -> Tensor:
        if self._cached is None or self._cached[0] != k:
            gen = torch.Generator().manual_seed(stream_seed(self.seed, PRIOR, k))
            shape = (PRIOR_BLOCK, *self.data_shape)
            self._cached = (k, self.sde.prior_sample(shape, generator=gen, dtype=self.dtype))
        return self._cached[1]

    def take(self, start: int, stop: int) -> Tensor:
        """Prior samples ``start .. stop - 1``, shape ``(stop - start, *dims)``, on the CPU."""
        first, last = start // PRIOR_BLOCK, (stop - 1) // PRIOR_BLOCK
        blocks = torch.cat([self._block(k) for k in range(first, last + 1)])
        return blocks[start - first * PRIOR_BLOCK : stop - first * PRIOR_BLOCK]


@dataclass
class DrawnSamples:
    """``samples`` ``(N, *dims)`` on the CPU; ``nfe`` ``(N,)`` score evaluations each sample went
    through; ``batch_nfe`` the NFE of each sampler call (their sum is the number of network calls);
    ``seconds`` the wall time of the sampling."""

    samples: Tensor
    nfe: Tensor
    batch_nfe: list[int]
    seconds: float


def draw_samples(
    sde: SDE,
    score_fn: ScoreFn,
    sampler: Callable,
    grid: Callable,
    data_shape: tuple[int, ...],
    n: int,
    *,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> DrawnSamples:
    """Draw ``n`` samples of shape ``data_shape`` with ``sampler(sde, score_fn, x_T, ts, generator=...)``
    in batches of ``batch_size``, on the grid ``ts = grid(sde, dtype=dtype, device=device)``.

    Seeds as described in the module docstring (:class:`PriorBlocks`, :func:`stream_seed`).
    Raises the sampler's or grid's ``ValueError`` when they refuse the SDE (e.g. no kernel).
    """
    device = torch.device(device)
    ts = grid(sde, dtype=dtype, device=device)
    prior = PriorBlocks(sde, data_shape, seed, dtype)

    def batch(lo: int, hi: int, generator: PerSampleNoise):
        return sampler(sde, score_fn, prior.take(lo, hi).to(device), ts, generator=generator, progress=progress)

    return sample_in_batches(batch, n, batch_size=batch_size, seed=seed, device=device, progress=progress)


def super_resolve(
    sde: SDE,
    score_model: Callable[..., Tensor],
    sampler: Callable,
    grid: Callable,
    conditioner: SuperResolution,
    low: Tensor,
    *,
    batch_size: int,
    seed: int,
    labels: Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> DrawnSamples:
    """One high-resolution sample ``(C, f h, f w)`` for each low-resolution image of ``low``
    ``(N, C, h, w)``: ``sampler`` on :class:`~sde_diffusion.conditioning.ConditionedScore` of the
    image-conditioned ``score_model``, the conditioning ``conditioner.sampling(low)`` (its fixed
    augmentation level; noise from per-sample streams ``stream_seed(seed, CONDITIONING, 0)``), prior
    and step noise seeded as :func:`draw_samples` (sample ``i`` is the same in every batching).
    ``labels``: optional ``(N,)`` class labels for a class-conditional model as well."""
    device = torch.device(device)
    low = low.to(device=device, dtype=dtype)
    ts = grid(sde, dtype=dtype, device=device)
    prior = PriorBlocks(sde, conditioner.output_shape(tuple(low.shape[1:])), seed, dtype)

    def batch(lo: int, hi: int, generator: PerSampleNoise):
        aug = PerSampleNoise(stream_seed(seed, CONDITIONING, 0), torch.arange(lo, hi, device=device))
        score = ConditionedScore(score_model, conditioner.sampling(low[lo:hi], aug), None if labels is None else labels[lo:hi].to(device))
        return sampler(sde, score, prior.take(lo, hi).to(device), ts, generator=generator, progress=progress)

    return sample_in_batches(batch, low.shape[0], batch_size=batch_size, seed=seed, device=device, progress=progress)


def sample_in_batches(
    call: Callable[[int, int, PerSampleNoise], SamplerOutput],
    n: int,
    *,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> DrawnSamples:
    """``call(lo, hi, generator)`` for samples ``lo .. hi - 1`` of ``n``, batch by batch, with
    ``generator = PerSampleNoise(stream_seed(seed, NOISE, 0), arange(lo, hi))`` on ``device``: each
    sample's own noise stream, whatever the batches. Collects the samples on
    the CPU, each batch's NFE and the wall time (the loop of :func:`draw_samples`, also used by
    ``sde-sample``'s inpainting and SDEdit of given inputs)."""
    device = torch.device(device)
    chunks, batch_nfe = [], []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for lo in tqdm(range(0, n, batch_size), disable=not progress, desc="batches"):
        hi = min(lo + batch_size, n)
        out = call(lo, hi, PerSampleNoise(stream_seed(seed, NOISE, 0), torch.arange(lo, hi, device=device)))
        chunks.append(out.samples.cpu())
        batch_nfe.append(int(out.nfe))
    seconds = time.perf_counter() - start  # .cpu() above waits for the device
    sizes = torch.tensor([len(c) for c in chunks])
    nfe = torch.repeat_interleave(torch.tensor(batch_nfe), sizes)
    return DrawnSamples(torch.cat(chunks), nfe, batch_nfe, seconds)
