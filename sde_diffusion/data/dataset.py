"""The container every data source returns: train and test tensors plus what is known about them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .._checks import check_range
from .._shapes import check_data


class Density(Protocol):
    """Anything with an exact data log-density, e.g. :class:`~sde_diffusion.data.GaussianMixture`."""

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` in nats, shape ``(B,)``, for ``x`` of shape ``(B, *dims)``."""
        ...


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Train and test splits of one data set, ``(N, *dims)`` float32 each.

    Args:
        train, test: ``(N_train, *dims)`` and ``(N_test, *dims)`` float32, finite, non-empty.
        name: short label used in logs and result files.
        distribution: the exact density of the data as stored here, when known in closed form
            (toy sets); its ``log_prob(x)`` gives ``(B,)`` nats. A model's NLL on ``test`` is then
            compared with the true ``-E log p``.
        levels, interval_width: for discrete data, the ``K`` levels per dimension spread over an
            interval of width ``w``, so bits/dim is ``(-log p / D + log(K / w)) / ln 2``
            (docs/references.md, bits per dimension). Both None for continuous data.
        shift, scale: set when the data were standardized, shape ``data_shape``: stored data are
            ``(raw - shift) / scale``; :meth:`unstandardize` maps samples back.
        train_labels, test_labels, n_classes: for labelled data, int64 class labels ``(N_train,)``
            and ``(N_test,)`` in ``0 .. n_classes - 1``, row ``i`` labelling sample ``i``. All three
            or none.
    """

    train: Tensor
    test: Tensor
    name: str
    distribution: Density | None = None
    levels: int | None = None
    interval_width: float | None = None
    shift: Tensor | None = None
    scale: Tensor | None = None
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    n_classes: int | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for split in ("train", "test"):
            x = check_data(getattr(self, split), f"{split} split of data set {self.name!r}")
            if x.dtype != torch.float32:
                raise TypeError(f"{split} split of data set {self.name!r} must be float32, got {x.dtype}; convert with .float()")
        if self.train.shape[1:] != self.test.shape[1:]:
            raise ValueError(
                f"train samples have shape {tuple(self.train.shape[1:])} but test samples have "
                f"{tuple(self.test.shape[1:])}; both splits must hold samples of one shape"
            )
        if self.distribution is not None and not callable(getattr(self.distribution, "log_prob", None)):
            raise TypeError(f"distribution must have a log_prob(x) method, got {type(self.distribution).__name__}")
        self._check_levels()
        self._check_standardization()
        self._check_labels()

    def _check_levels(self) -> None:
        if (self.levels is None) != (self.interval_width is None):
            raise ValueError("levels and interval_width describe discrete data together: give both or neither")
        levels, width = self.levels, self.interval_width
        if levels is None or width is None:  # both None (checked above): continuous data
            return
        check_range("levels", levels, low=2, integer=True, hint="K levels per dimension, e.g. 256 for 8-bit data")
        check_range("interval_width", width, low=0.0, low_open=True, hint="e.g. 2 for data in [-1, 1]")

    def _check_standardization(self) -> None:
        if (self.shift is None) != (self.scale is None):
            raise ValueError("shift and scale describe one standardization together: give both or neither")
        shift, scale = self.shift, self.scale
        if shift is None or scale is None:  # both None (checked above): not standardized
            return
        for field, v in (("shift", shift), ("scale", scale)):
            if not isinstance(v, Tensor) or v.shape != self.train.shape[1:]:
                shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ValueError(f"{field} must be a tensor of the sample shape {self.data_shape}, got {shape}")
        if not (torch.isfinite(shift).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("shift must be finite and scale finite and positive everywhere")

    def _check_labels(self) -> None:
        given = [f for f in ("train_labels", "test_labels", "n_classes") if getattr(self, f) is not None]
        if not given:
            return
        if len(given) < 3:
            raise ValueError(
                f"train_labels, test_labels and n_classes describe labelled data together: give all three or none (got only {', '.join(given)})"
            )
        n_classes = check_range("n_classes", self.n_classes, low=1, integer=True)
        for split in ("train", "test"):
            y, n = getattr(self, f"{split}_labels"), len(getattr(self, split))
            if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != (n,):
                what = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
                raise ValueError(f"{split}_labels must be an int64 tensor of shape ({n},), one label per {split} sample; got {what}")
            if bool(((y < 0) | (y >= n_classes)).any()):
                raise ValueError(
                    f"{split}_labels must lie in 0..{n_classes - 1} (n_classes={n_classes}); got values from {int(y.min())} to {int(y.max())}"
                )

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample, ``dims`` in ``(N, *dims)``."""
        return tuple(self.train.shape[1:])

    def unstandardize(self, x: Tensor) -> Tensor:
        """Map ``(B, *dims)`` samples in the stored space back to the raw data: ``x * scale + shift``
        (identity when the data were not standardized)."""
        if self.scale is None:
            return x
        assert self.shift is not None  # __post_init__ checks that shift and scale are given together
        scale, shift = self.scale.to(x), self.shift.to(x)  # (*dims) broadcasts against (B, *dims)
        return x * scale + shift

    def __repr__(self) -> str:
        extras = "".join(f", {k}={getattr(self, k)!r}" for k in ("levels", "interval_width") if getattr(self, k) is not None)
        dist = "" if self.distribution is None else f", distribution={self.distribution!r}"
        std = ", standardized" if self.scale is not None else ""
        classes = f", n_classes={self.n_classes}" if self.n_classes is not None else ""
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
            f"data_shape={self.data_shape}{dist}{extras}{std}{classes})"
        )
