"""Seeds derived from a base seed and indices, so that random streams do not depend on how work is
split (across batches, micro-batches or processes)."""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 64-bit seed mixed from integer ``keys`` by numpy's ``SeedSequence``: neighbouring keys give
    unrelated streams, and the same keys always give the same seed."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])
