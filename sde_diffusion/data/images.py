"""Image data: scikit-learn's 8x8 handwritten digits and the user's own integer images in ``.npz``.

Every image set is stored as ``(N, C, H, W)`` float32 on ``[-1, 1)`` with the convention
:func:`~sde_diffusion.likelihood.dequantize` expects: a pixel at integer level ``k`` of ``K`` is the
LEFT EDGE of its bin, ``x = -1 + 2 k / K`` (so ``k = 0`` is ``-1`` and ``k = K - 1`` is ``1 - 2 / K``).
The returned :class:`Dataset` records ``levels = K`` and ``interval_width = 2``: dequantize with
``dequantize(x, K)`` (its default interval ``(-1, 1)``), and bits/dim carry the offset
``log2(K / 2)`` (docs/references.md, bits per dimension).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._checks import check_range
from ..conditioning import downsample
from .arrays import _read_array
from .dataset import Dataset

IMAGE_INTERVAL = (-1.0, 1.0)
"""``(low, high)`` of every image set here: levels are the left edges ``low + k (high - low) / K``."""
_WIDTH = IMAGE_INTERVAL[1] - IMAGE_INTERVAL[0]

DIGITS_LEVELS = 17
"""Grey levels of scikit-learn's digits: each pixel counts the set pixels of a 4x4 block, 0..16."""

_MAX_LEVELS = 2**16  # float32 holds the left edges of at most 16-bit images exactly


def levels_to_interval(k: Tensor, levels: int) -> Tensor:
    """Integer levels ``k`` in ``0 .. K - 1`` to float32 left edges ``-1 + 2 k / K`` on ``[-1, 1)``."""
    return (IMAGE_INTERVAL[0] + k.double() * (_WIDTH / levels)).float()


def _split(x: Tensor, labels: Tensor | None, n_test: int, seed: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Shuffle rows with a permutation seeded by ``seed``; the first ``n_test`` become the test split.
    Returns ``train, test, train_labels, test_labels`` (labels None when ``labels`` is None)."""
    n = x.shape[0]
    seed = check_range("seed", seed, low=0, integer=True)
    if not 1 <= n_test < n:
        raise ValueError(f"the test split must hold between 1 and {n - 1} of the {n} images, got {n_test}; change test_fraction or n_test")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    if labels is None:
        return x[train], x[test], None, None
    return x[train], x[test], labels[train], labels[test]


def digits_dataset(n_test: int = 297, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 handwritten digits (UCI optical digits) as ``(N, 1, 8, 8)`` images.

    Each pixel is a count in ``0 .. 16`` (``K = 17`` levels), stored as ``-1 + 2 k / 17``; labels are
    the digits ``0 .. 9``. The split is a fixed seeded permutation: by default 1,500 train and 297
    test images. The data ship inside scikit-learn, so nothing is downloaded.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the digits data set ships with scikit-learn: pip install scikit-learn") from err
    digits = load_digits()
    k = torch.from_numpy(digits.images).round().long()  # float64 counts 0..16, exactly integers
    x = levels_to_interval(k, DIGITS_LEVELS)[:, None]
    labels = torch.from_numpy(digits.target).long()
    train, test, train_labels, test_labels = _split(x, labels, n_test, seed)
    return Dataset(
        train,
        test,
        "digits",
        levels=DIGITS_LEVELS,
        interval_width=_WIDTH,
        train_labels=train_labels,
        test_labels=test_labels,
        n_classes=10,
    )


def _image_levels(raw: np.ndarray, name: str, bits: int | None, levels: int | None) -> int:
    """``K``: from ``levels``, from ``bits`` (``2**bits``), or from an unsigned 8- or 16-bit dtype."""
    if bits is not None and levels is not None:
        raise ValueError(f"give bits or levels, not both (got bits={bits}, levels={levels})")
    if bits is not None:
        return 2 ** check_range("bits", bits, low=1, high=16, integer=True, hint="8 for 8-bit images")
    if levels is not None:
        return check_range("levels", levels, low=2, high=_MAX_LEVELS, integer=True, hint="e.g. 17 for the digits")
    if raw.dtype.kind == "u" and raw.dtype.itemsize <= 2:
        return 2 ** (8 * raw.dtype.itemsize)
    top = int(raw.max())
    raise ValueError(
        f"{name} has dtype {raw.dtype}, whose bit depth cannot be inferred (only uint8 and uint16 can); "
        f"pass bits (its values up to {top} need bits={max(1, top.bit_length())}) or levels"
    )


def _check_integer_images(raw: np.ndarray, name: str) -> None:
    """Images must be integer levels: no NaN, no floats, no other kinds of data."""
    if raw.dtype.kind == "f" and np.isnan(raw).any():
        rows = np.isnan(raw.reshape(raw.shape[0], -1)).any(axis=1).nonzero()[0]
        raise ValueError(
            f"{name} contains NaN in {rows.size} of {raw.shape[0]} images (first at index {rows[0]}); drop or repair those images"
        )
    if raw.dtype.kind != "i" and raw.dtype.kind != "u":
        raise ValueError(
            f"{name} has dtype {raw.dtype} but images must hold integer levels 0..K-1; convert them "
            f"first, e.g. np.round(x * 255).astype(np.uint8) for floats in [0, 1], or x.astype(np.uint8) "
            f"for whole-number floats below 256"
        )


def _to_nchw(raw: np.ndarray, name: str, channels_last: bool | None) -> np.ndarray:
    """``N x H x W`` gets one channel; ``N x H x W x C`` is moved to ``N x C x H x W`` when
    ``channels_last`` is true, or when it is None and only the last axis looks like channels."""
    if raw.ndim == 3:
        return raw[:, None]
    if raw.ndim != 4:
        raise ValueError(
            f"{name} has shape {raw.shape}, but images must be N x H x W or N x C x H x W (or N x H x W x C with channels_last=True)"
        )
    if channels_last is None:
        colour = (1, 3, 4)
        channels_last = raw.shape[3] in colour and raw.shape[1] not in colour
    return raw.transpose(0, 3, 1, 2) if channels_last else raw


def _read_labels(path: Path, key: str, n: int) -> tuple[Tensor, int]:
    """Labels ``key`` of ``path`` as int64 ``(n,)`` and the class count ``max + 1``."""
    raw = _read_array(path, key)
    name = f"labels {key!r} in {str(path)!r}"
    if raw.dtype.kind not in "iu":
        raise ValueError(f"{name} have dtype {raw.dtype} but must be integers 0..n_classes-1; convert with labels.astype(np.int64)")
    if raw.shape != (n,):
        raise ValueError(f"{name} have shape {raw.shape} but must be ({n},), one label per image")
    if raw.min() < 0:
        raise ValueError(f"{name} must be non-negative class indices 0..n_classes-1, got {raw.min()}")
    return torch.from_numpy(raw.astype(np.int64)), int(raw.max()) + 1


def npz_image_dataset(
    path: str | os.PathLike,
    key: str = "x",
    labels_key: str | None = None,
    bits: int | None = None,
    levels: int | None = None,
    channels_last: bool | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """The user's integer images from an ``.npz`` archive as ``(N, C, H, W)`` on ``[-1, 1)``.

    Args:
        path, key: the archive and the name of the image array in it.
        labels_key: name of an optional integer array ``(N,)`` of class labels ``0 .. n_classes - 1``
            (``n_classes`` is the largest label plus one).
        bits, levels: ``K = 2**bits`` levels per pixel, or ``K = levels`` directly; neither infers
            ``K`` from an unsigned dtype (uint8: 256, uint16: 65536). Values must lie in ``0 .. K - 1``
            and are stored as ``-1 + 2 k / K``.
        channels_last: shape ``N x H x W`` gets one channel. A 4-D array is ``N x C x H x W``,
            unless ``channels_last=True``, or ``None`` and the layout is unambiguous: the last axis
            has 1, 3 or 4 entries and axis 1 has none of those counts (e.g. ``N x 32 x 32 x 3``).
        test_fraction, seed: the first ``round(test_fraction * N)`` images of a permutation seeded by
            ``seed`` form the test split.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an ``.npz``; a key is missing; NaN; float or other non-integer dtype (the
            message says how to convert); not 3-D or 4-D; values outside ``0 .. K - 1``; a bit depth
            that cannot be inferred; bad labels; a split without rows.
    """
    check_range("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    path = Path(path)
    raw = _read_array(path, key)
    name = f"array {key!r} in {str(path)!r}"
    _check_integer_images(raw, name)
    if raw.size == 0:
        raise ValueError(f"{name} is empty (shape {raw.shape})")
    n_levels = _image_levels(raw, name, bits, levels)
    raw = _to_nchw(raw, name, channels_last)
    low, high = raw.min(), raw.max()
    if low < 0 or high >= n_levels:
        raise ValueError(
            f"{name} has values from {low} to {high}, outside the {n_levels} levels 0..{n_levels - 1}; "
            f"pass the bits or levels your images were stored with"
        )
    x = levels_to_interval(torch.from_numpy(raw.astype(np.int64)), n_levels)
    labels, n_classes = _read_labels(path, labels_key, len(x)) if labels_key is not None else (None, None)
    n_test = int(test_fraction * len(x) + 0.5)
    train, test, train_labels, test_labels = _split(x, labels, n_test, seed)
    return Dataset(
        train,
        test,
        path.stem,
        levels=n_levels,
        interval_width=_WIDTH,
        train_labels=train_labels,
        test_labels=test_labels,
        n_classes=n_classes,
    )


def low_resolution(dataset: Dataset, factor: int = 2) -> Dataset:
    """``dataset`` (images ``(N, C, H, W)``) downsampled by ``factor`` (average pooling,
    :func:`~sde_diffusion.conditioning.downsample`): the data of a cascade's base model, e.g. the
    digits at 4x4 for ``factor=2``. Splits and labels are kept, row for row, so a base model and a
    super-resolution model of the same images share their held-out set. The block means of ``K``
    levels are no longer on the levels, so the result is continuous data (``levels`` None: its
    likelihood is a density, not bits/dim of discrete data).
    """
    if not isinstance(dataset, Dataset) or dataset.train.dim() != 4:
        raise ValueError(f"low_resolution needs an image Dataset (N, C, H, W), got {getattr(dataset, 'name', type(dataset).__name__)!r}")
    return Dataset(
        downsample(dataset.train, factor),
        downsample(dataset.test, factor),
        f"{dataset.name} at 1/{factor}" if factor > 1 else dataset.name,
        train_labels=dataset.train_labels,
        test_labels=dataset.test_labels,
        n_classes=dataset.n_classes,
    )


def class_subset(dataset: Dataset, classes: list[int], per_class: int | None = None, seed: int = 0) -> Dataset:
    """The rows of labelled ``dataset`` whose labels are in ``classes``: at most ``per_class`` training
    rows of each (a seeded random choice; None keeps all) and every held-out row. Labels keep their
    values, so a model trained on a subset knows the classes' numbers:
    ``classes=[0, ..., 8]`` trains without the nines, ``classes=[9] per_class=5`` gives five nines to
    fine-tune on. ``n_classes`` becomes one more than the largest class kept (9 for ``0 .. 8``), so
    a model built with ``n_classes=auto`` on the subset has no row for the classes left out."""
    if dataset.train_labels is None or dataset.test_labels is None or dataset.n_classes is None:
        raise ValueError(f"class_subset needs labelled data; {dataset.name!r} has no labels")
    wanted = sorted({int(c) for c in classes})
    if not wanted or wanted[0] < 0 or wanted[-1] >= dataset.n_classes:
        raise ValueError(f"classes must be labels in 0..{dataset.n_classes - 1}, got {list(classes)!r}")
    per_class = check_range("per_class", per_class, low=1, integer=True, optional=True, hint="null: all rows")
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c in wanted:
        idx = torch.nonzero(dataset.train_labels == c)[:, 0]
        idx = idx[torch.randperm(len(idx), generator=gen)][:per_class] if per_class is not None else idx
        rows.append(idx)
    train = torch.cat(rows).sort().values
    test = torch.nonzero(torch.isin(dataset.test_labels, torch.tensor(wanted)))[:, 0]
    count = "" if per_class is None else f", {per_class} each"
    return Dataset(
        dataset.train[train],
        dataset.test[test],
        f"{dataset.name} (classes {','.join(map(str, wanted))}{count})",
        levels=dataset.levels,
        interval_width=dataset.interval_width,
        train_labels=dataset.train_labels[train],
        test_labels=dataset.test_labels[test],
        n_classes=wanted[-1] + 1,
    )
