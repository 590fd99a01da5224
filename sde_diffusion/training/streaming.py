"""Training batches streamed from host memory: for data sets that should not live on the device.

Step ``k`` trains on the rows ``data[i_k]`` with ``i_k`` drawn from a generator seeded
``derive_seed(seed, STREAM_KEY, k)``: a counter-based stream, so the rows of a step do not depend
on how far ahead the loader's workers have gathered, and a run resumed at step ``k`` continues with
the rows the uninterrupted run would have used. A ``torch.utils.data.DataLoader`` gathers each
step's rows in ``workers`` worker processes (pinned when the device is CUDA, so the copy to the
device runs asynchronously, ``non_blocking``) while the device computes the previous steps.
``data`` may be any CPU tensor, including one backed by a memory-mapped array
(``torch.from_numpy(np.load("x.npy", mmap_mode="r"))``): only the rows of each batch are read.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .._seeding import derive_seed

STREAM_KEY = 0x5EED_DA7A
"""Keeps the row stream's seeds apart from the micro-batch noise seeds ``derive_seed(seed, step, c)``."""


def step_indices(n_rows: int, batch_size: int, seed: int, step: int) -> Tensor:
    """``(batch_size,)`` int64 row indices of step ``step`` (0-based), drawn with replacement."""
    generator = torch.Generator().manual_seed(derive_seed(seed, STREAM_KEY, step))
    return torch.randint(n_rows, (batch_size,), generator=generator)


class _StepRows(Dataset):
    """Item ``k``: step ``k``'s indices and rows ``(idx, data[idx])``."""

    def __init__(self, data: Tensor, batch_size: int, seed: int):
        self.data, self.batch_size, self.seed = data, batch_size, seed

    def __getitem__(self, step: int) -> tuple[Tensor, Tensor]:
        idx = step_indices(self.data.shape[0], self.batch_size, self.seed, step)
        return idx, self.data[idx]


def stream_batches(
    data: Tensor, batch_size: int, seed: int, first_step: int, device: torch.device, *, workers: int = 2
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(idx, rows)`` on ``device`` for steps ``first_step, first_step + 1, ...`` (without end):
    ``idx`` ``(B,)`` int64 and ``rows`` ``(B, *dims)``, gathered ahead by ``workers`` processes (0: in
    this process; each worker holds at most two batches ahead)."""
    if data.device.type != "cpu":
        raise ValueError(f"streamed training data must be in host memory, got a tensor on {data.device}")
    loader = DataLoader(
        _StepRows(data, batch_size, seed),
        sampler=itertools.count(first_step),  # type: ignore[arg-type]  # any iterable of item keys; each item is a whole batch
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
    )
    for idx, rows in loader:
        yield idx.to(device, non_blocking=True), rows.to(device, non_blocking=True)
