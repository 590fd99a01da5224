"""Seeds derived from a base seed and indices, so that random streams do not depend on how work is
split (across batches, micro-batches or processes)."""

from __future__ import annotations

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's output function (Steele, Lea & Flood 2014): a bijection of 64-bit integers whose
    outputs for neighbouring inputs look unrelated."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def derive_seed(*keys: int) -> int:
    """A 64-bit seed in ``[0, 2^64)`` mixed from integer ``keys`` (order and count matter):
    neighbouring keys give unrelated streams, and the same keys always give the same seed. Pure
    Python, about a microsecond: cheap enough to call for every training micro-batch."""
    h = _splitmix64(len(keys))
    for key in keys:
        h = _splitmix64(h ^ (int(key) & _MASK))
    return h
