"""The user's own data: one array from a ``.npz`` archive, shuffled and split into a :class:`Dataset`."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._checks import check_range
from .._shapes import check_data
from .dataset import Dataset


def _read_array(path: Path, key: str) -> np.ndarray:
    """The array ``key`` of the archive at ``path``, with file errors that name the fix."""
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the working directory {os.getcwd()})"
        raise FileNotFoundError(f"no data file at {str(path)!r}{where}; check the path")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{str(path)!r} is not an .npz archive; save your data with numpy.savez({str(path)!r}, {key}=array)")
    with np.load(path, allow_pickle=False) as archive:
        if key not in archive.files:
            raise ValueError(f"{str(path)!r} has no array {key!r}; the arrays present are {archive.files}: pass one as key")
        try:
            return archive[key]
        except ValueError as err:  # object arrays need pickle, which is never enabled
            raise ValueError(f"array {key!r} in {str(path)!r} has dtype object; store real numbers (a float or integer array)") from err


def _to_float32(raw: np.ndarray, name: str) -> Tensor:
    """``raw`` as a validated float32 tensor: numbers only, at least 2-D, non-empty, finite."""
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"{name} has dtype {raw.dtype} but data must be real numbers; convert it to a float or integer array")
    # NaN and inf are located in the file's own precision, before the cast to float32
    native = raw.astype(raw.dtype.newbyteorder("="), copy=False)
    x = torch.from_numpy(native) if raw.dtype.kind == "f" else torch.from_numpy(native.astype(np.float32))
    check_data(x, name)
    x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} has values beyond the float32 range (|x| > 3.4e38); rescale them")
    return x


def _standardization(train: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and standard deviation ``(*dims)`` of the train split; a constant feature
    keeps scale 1 so it is only shifted."""
    mean = train.double().mean(dim=0)
    std = train.double().std(dim=0, correction=0)
    return mean.float(), torch.where(std > 0, std, torch.ones_like(std)).float()


def npz_dataset(
    path: str | os.PathLike,
    key: str = "x",
    test_fraction: float = 0.1,
    seed: int = 0,
    standardize: bool = False,
) -> Dataset:
    """Load the array ``key`` of shape ``(N, *dims)`` from an ``.npz`` file into a :class:`Dataset`.

    Rows are shuffled with ``seed`` and the first ``round(test_fraction * N)`` become the test split.
    Integer arrays become float32 (values unchanged; levels and bit depth are not inferred). With
    ``standardize=True`` the data are stored as ``(x - shift) / scale`` with the train split's
    per-feature mean and standard deviation, recorded on the result as ``shift`` and ``scale``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an ``.npz``; ``key`` missing; non-numeric dtype; NaN or inf; fewer than 2
            axes; empty; too few rows for both splits to get one.
    """
    check_range("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    check_range("seed", seed, integer=True)
    path = Path(path)
    x = _to_float32(_read_array(path, key), f"array {key!r} in {str(path)!r}")
    n = x.shape[0]
    n_test = int(test_fraction * n + 0.5)
    if not 1 <= n_test < n:
        raise ValueError(
            f"{n} rows are too few to split with test_fraction={test_fraction} (test {n_test}, train "
            f"{n - n_test} rows): both splits need at least 1; add rows or choose test_fraction "
            f"between {1 / n:.3g} and {1 - 1 / n:.3g}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    test, train = x[order[:n_test]], x[order[n_test:]]
    shift = scale = None
    if standardize:
        shift, scale = _standardization(train)
        train, test = (train - shift) / scale, (test - shift) / scale
    return Dataset(train=train, test=test, name=path.stem, shift=shift, scale=scale)
