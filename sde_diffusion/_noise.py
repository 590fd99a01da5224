"""Gaussian noise that belongs to samples, not to batches: a counter-based generator.

Row ``b`` of every draw of :class:`PerSampleNoise` is a function of ``(seed, indices[b], draw
number, element)`` only, so a sample gets the same noise whatever batch it is drawn in, in whatever
batch size, on CPU or GPU (EDM's per-sample generators, Karras et al. 2022, ``generate.py``, do the
same with one ``torch.Generator`` per sample; a counter-based generator needs no Python loop over
samples). The bits come from SplitMix64 (Steele, Lea & Flood 2014) evaluated on 64-bit counters with
torch integer arithmetic, the normals from the Box-Muller transform in float64.

:func:`randn` is what samplers call: it draws from a :class:`PerSampleNoise`, or from a plain
``torch.Generator`` (or the global generator) as torch does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._seeding import derive_seed

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 torch stores it (two's complement)."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 ``x`` (torch's ``>>`` is arithmetic: mask the sign bits away)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(x: Tensor) -> Tensor:
    """SplitMix64's mixing function on an int64 tensor; multiplication wraps modulo 2^64."""
    x = x + _signed(_GOLDEN)
    x = (x ^ _shr(x, 30)) * _signed(_MIX1)
    x = (x ^ _shr(x, 27)) * _signed(_MIX2)
    return x ^ _shr(x, 31)


def _uniform53(bits: Tensor) -> Tensor:
    """float64 uniforms in ``(0, 1]`` from the top 53 bits of int64 ``bits``."""
    return (_shr(bits, 11) + 1).to(torch.float64) * 2.0**-53


class PerSampleNoise:
    """Standard normal noise for a batch of samples numbered ``indices``, one stream per sample.

    Each call of :meth:`randn` is the next draw of every stream: row ``b`` of draw ``k`` depends
    only on ``seed``, ``indices[b]``, ``k`` and the element's position in the row, so the rows are
    reproducible and independent of the batch they are drawn in.

    Args:
        seed: the base seed (any integer).
        indices: ``(B,)`` integer sample numbers, unique within one sampling run.
    """

    def __init__(self, seed: int, indices: Tensor):
        indices = torch.as_tensor(indices)
        if indices.dim() != 1 or indices.is_floating_point():
            raise ValueError(f"indices must be a 1-D integer tensor of sample numbers, got shape {tuple(indices.shape)}")
        self.seed = int(seed)
        self.indices = indices.to(torch.int64)
        self.draws = 0
        base = _signed(derive_seed(self.seed))
        self._keys = _splitmix64(_splitmix64(self.indices ^ base))  # (B,), one key per sample

    def randn(self, shape: tuple[int, ...] | torch.Size, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """The next draw: a ``shape = (B, *dims)`` tensor of standard normals, row ``b`` from sample
        ``indices[b]``'s stream."""
        shape = tuple(shape)
        if not shape or shape[0] != len(self.indices):
            raise ValueError(f"PerSampleNoise for {len(self.indices)} samples cannot draw shape {shape}: the first axis is the batch")
        device = torch.device(device) if device is not None else self.indices.device
        n = math.prod(shape[1:])
        draw = _splitmix64(self._keys.to(device) ^ self.draws)  # (B,)
        self.draws += 1
        element = torch.arange(n, device=device, dtype=torch.int64)
        bits1 = _splitmix64(draw[:, None] ^ (2 * element))
        bits2 = _splitmix64(draw[:, None] ^ (2 * element + 1))
        radius = torch.sqrt(-2.0 * torch.log(_uniform53(bits1)))
        z = radius * torch.cos(2.0 * math.pi * _uniform53(bits2))
        return z.to(dtype).reshape(shape)

    def __repr__(self) -> str:
        return f"PerSampleNoise(seed={self.seed}, samples={len(self.indices)}, draws={self.draws})"


NoiseSource = torch.Generator | PerSampleNoise | None
"""What samplers accept as ``generator``: a torch generator (noise per batch), per-sample streams,
or None for torch's global generator."""


def randn(shape: tuple[int, ...] | torch.Size, generator: NoiseSource = None, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Standard normal noise of ``shape`` from ``generator`` (see :data:`NoiseSource`)."""
    if isinstance(generator, PerSampleNoise):
        return generator.randn(shape, dtype=dtype, device=device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)


def randn_like(x: Tensor, generator: NoiseSource = None) -> Tensor:
    """:func:`randn` with the shape, dtype and device of ``x``."""
    return randn(x.shape, generator, dtype=x.dtype, device=x.device)
