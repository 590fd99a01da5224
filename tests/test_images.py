"""Image data: the digits' levels, range, split and labels against scikit-learn's raw data; the
left-edge convention against dequantize and bits/dim; the .npz image loader's round trips and its
errors; labelled Datasets; the image data configs. Checks are exact; the only tolerances (1e-7)
absorb the float32 rounding of left edges such as 1 - 2/17."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sde_diffusion.data import DIGITS_LEVELS, Dataset, digits_dataset, levels_to_interval, npz_image_dataset
from sde_diffusion.likelihood import bits_per_dim, dequantization_offset, dequantize

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return digits_dataset()


@pytest.fixture(scope="module")
def raw_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.int64), d.target


def _levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Invert ``-1 + 2 k / K``: the integer level of every value (exact for the left edges)."""
    k = (x.double() + 1) * levels / 2
    assert (k - k.round()).abs().max() < 1e-4, "values are not left bin edges"
    return k.round().long()


def _row_multiset(*columns: np.ndarray) -> np.ndarray:
    """Rows of the stacked columns sorted lexicographically: equal iff the two row multisets are."""
    rows = np.concatenate([c.reshape(len(c), -1) for c in columns], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


# -------------------------------------------------------------------------------------- digits
def test_digits_shapes_levels_and_range(digits):
    assert digits.name == "digits" and digits.data_shape == (1, 8, 8)
    assert digits.train.shape == (1500, 1, 8, 8) and digits.test.shape == (297, 1, 8, 8)
    assert digits.train.dtype == torch.float32
    assert digits.levels == DIGITS_LEVELS == 17 and digits.interval_width == 2.0
    every = torch.cat([digits.train, digits.test])
    # all 17 left edges -1 + 2k/17 occur, and nothing else: min -1, max 1 - 2/17
    expected = torch.tensor([-1 + 2 * k / 17 for k in range(17)], dtype=torch.float32)
    assert torch.equal(every.unique(), expected)
    assert every.min() == -1.0 and every.max() == pytest.approx(1 - 2 / 17, abs=1e-7)


def test_digits_split_is_a_partition_with_matching_labels(digits, raw_digits):
    images, target = raw_digits
    k = torch.cat([_levels(digits.train, 17), _levels(digits.test, 17)]).numpy()
    labels = torch.cat([digits.train_labels, digits.test_labels]).numpy()
    # every (image, label) pair of scikit-learn appears exactly once across the two splits
    np.testing.assert_array_equal(_row_multiset(k, labels[:, None]), _row_multiset(images, target[:, None]))
    assert digits.n_classes == 10 and digits.train_labels.dtype == torch.int64
    assert set(digits.train_labels.tolist()) == set(digits.test_labels.tolist()) == set(range(10))


def test_digits_split_is_fixed_by_the_seed(digits):
    again, other = digits_dataset(), digits_dataset(seed=1)
    assert torch.equal(again.train, digits.train) and torch.equal(again.test_labels, digits.test_labels)
    assert not torch.equal(other.test, digits.test)
    assert digits_dataset(n_test=97).test.shape == (97, 1, 8, 8)
    with pytest.raises(ValueError, match="between 1 and 1796"):
        digits_dataset(n_test=0)


def test_digits_satisfy_dequantize_and_the_bits_per_dim_offset(digits):
    low, high = -1.0, -1.0 + digits.interval_width
    y = dequantize(digits.test, digits.levels, (low, high), generator=torch.Generator().manual_seed(0))
    # each value is spread over its own bin [x, x + w / K) and nowhere else
    k = _levels(digits.test, 17)
    assert torch.equal(torch.floor((y.double() + 1) * 17 / 2).long(), k)
    assert y.min() >= -1 and y.max() < 1
    # bits/dim of a density with log p = 0 is exactly the offset log2(K / w) = log2(17 / 2)
    offset = bits_per_dim(torch.zeros(3), 64, digits.levels, (low, high))
    torch.testing.assert_close(offset, torch.full((3,), math.log2(17 / 2)), rtol=0, atol=1e-6)
    assert dequantization_offset(digits.levels, (low, high)) == pytest.approx(math.log2(8.5), rel=1e-12)


def test_levels_to_interval_are_the_left_edges_dequantize_expects():
    for levels in (2, 17, 256, 2**16):
        k = torch.tensor([0, 1, levels // 2, levels - 1])
        x = levels_to_interval(k, levels)
        assert x.dtype == torch.float32 and x[0] == -1.0
        torch.testing.assert_close(x.double(), -1 + 2 * k.double() / levels, rtol=0, atol=1e-7)
        dequantize(x[:, None], levels)  # raises unless every value is a left edge on [-1, 1)


# ---------------------------------------------------------------------------------- npz images
def _save(tmp_path, name="images.npz", **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _uint8_images(shape=(20, 6, 6), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _all_rows(ds: Dataset, levels: int) -> np.ndarray:
    return torch.cat([_levels(ds.train, levels), _levels(ds.test, levels)]).numpy()


def test_npz_uint8_round_trip_with_labels(tmp_path):
    raw = _uint8_images()
    labels = np.arange(20) % 4
    ds = npz_image_dataset(_save(tmp_path, x=raw, y=labels), labels_key="y", test_fraction=0.25, seed=3)
    assert ds.train.shape == (15, 1, 6, 6) and ds.test.shape == (5, 1, 6, 6) and ds.name == "images"
    assert ds.levels == 256 and ds.interval_width == 2.0 and ds.n_classes == 4
    got_labels = torch.cat([ds.train_labels, ds.test_labels]).numpy()
    np.testing.assert_array_equal(_row_multiset(_all_rows(ds, 256), got_labels[:, None]), _row_multiset(raw, labels[:, None]))
    dequantize(ds.train, ds.levels)  # the stored values are left edges on [-1, 1)
    again = npz_image_dataset(_save(tmp_path, x=raw, y=labels), labels_key="y", test_fraction=0.25, seed=3)
    assert torch.equal(again.test, ds.test) and torch.equal(again.test_labels, ds.test_labels)
    assert npz_image_dataset(_save(tmp_path, x=raw)).n_classes is None


@pytest.mark.parametrize(
    "dtype, kwargs, levels",
    [(np.uint16, {}, 2**16), (np.uint16, {"bits": 12}, 4096), (np.int64, {"bits": 5}, 32), (np.int32, {"levels": 17}, 17), (np.uint8, {"bits": 1}, 2)],
)
def test_npz_levels_from_dtype_bits_or_levels(tmp_path, dtype, kwargs, levels):
    raw = np.random.default_rng(1).integers(0, levels, size=(10, 4, 4)).astype(dtype)
    raw[0, 0, 0], raw[0, 0, 1] = 0, levels - 1  # both ends of the range
    ds = npz_image_dataset(_save(tmp_path, x=raw), **kwargs)
    assert ds.levels == levels
    np.testing.assert_array_equal(_row_multiset(_all_rows(ds, levels)), _row_multiset(raw))
    every = torch.cat([ds.train, ds.test])
    assert every.min() == -1.0 and every.max() == pytest.approx(1 - 2 / levels, abs=1e-7)


def test_npz_colour_layouts(tmp_path):
    nchw = _uint8_images((10, 3, 5, 7))
    ds = npz_image_dataset(_save(tmp_path, x=nchw))
    assert ds.data_shape == (3, 5, 7)
    np.testing.assert_array_equal(_row_multiset(_all_rows(ds, 256)), _row_multiset(nchw))
    # N x H x W x C with 3 channels last and 5 rows first is unambiguous: moved to N x C x H x W
    nhwc = nchw.transpose(0, 2, 3, 1)
    auto = npz_image_dataset(_save(tmp_path, x=nhwc))
    assert auto.data_shape == (3, 5, 7) and torch.equal(auto.train, ds.train)
    # ambiguous (3 x 4 x 4 x 3) stays channels-first unless told
    square = _uint8_images((10, 3, 4, 3))
    assert npz_image_dataset(_save(tmp_path, x=square)).data_shape == (3, 4, 3)
    told = npz_image_dataset(_save(tmp_path, x=square), channels_last=True)
    assert told.data_shape == (3, 3, 4)
    np.testing.assert_array_equal(_row_multiset(_all_rows(told, 256)), _row_multiset(square.transpose(0, 3, 1, 2)))


def test_npz_image_config_instantiates(tmp_path):
    cfg = OmegaConf.load(CONF_DATA / "npz_images.yaml")
    assert OmegaConf.is_missing(cfg, "path")
    cfg.path = str(_save(tmp_path, x=_uint8_images(), labels=np.arange(20) % 2))
    cfg.labels_key = "labels"
    ds = instantiate(cfg)
    assert ds.data_shape == (1, 6, 6) and ds.levels == 256 and ds.n_classes == 2


def test_digits_config_instantiates(digits):
    ds = instantiate(OmegaConf.load(CONF_DATA / "digits.yaml"))
    assert torch.equal(ds.train, digits.train) and torch.equal(ds.test_labels, digits.test_labels)


# ------------------------------------------------------------------------------------ bad files
def _nan_images():
    x = _uint8_images((6, 4, 4)).astype(np.float32)
    x[2, 1, 1] = x[4, 0, 3] = np.nan
    return x


@pytest.mark.parametrize(
    "arrays, kwargs, message",
    [
        ({"pixels": _uint8_images()}, {}, r"has no array 'x'; the arrays present are \['pixels'\]"),
        ({"x": _uint8_images()}, {"labels_key": "y"}, r"has no array 'y'"),
        ({"x": _nan_images()}, {}, r"NaN in 2 of 6 images \(first at index 2\)"),
        ({"x": _uint8_images().astype(np.float64)}, {}, r"dtype float64 .* integer levels.*np.round\(x \* 255\).astype\(np.uint8\)"),
        ({"x": np.array([[["a"]]])}, {}, r"dtype <U1 .* integer levels"),
        ({"x": np.empty((2, 2, 2), dtype=object)}, {}, "dtype object"),
        ({"x": _uint8_images((20, 36))}, {}, r"shape \(20, 36\), but images must be N x H x W or N x C x H x W"),
        ({"x": _uint8_images((2, 1, 3, 4, 4))}, {}, "images must be N x H x W"),
        ({"x": _uint8_images()}, {"bits": 4}, r"values from \d+ to 255, outside the 16 levels 0..15; pass the bits"),
        ({"x": np.full((4, 3, 3), -1, dtype=np.int16)}, {"levels": 17}, "values from -1 to -1, outside the 17 levels"),
        ({"x": np.full((4, 3, 3), 200, dtype=np.int64)}, {}, r"int64, whose bit depth cannot be inferred .* bits=8"),
        ({"x": _uint8_images()}, {"bits": 8, "levels": 256}, "bits or levels, not both"),
        ({"x": _uint8_images()}, {"bits": 17}, r"bits must be an integer in \[1, 16\]"),
        ({"x": _uint8_images(), "y": np.arange(20.0)}, {"labels_key": "y"}, r"dtype float64 .* labels.astype\(np.int64\)"),
        ({"x": _uint8_images(), "y": np.arange(19)}, {"labels_key": "y"}, r"shape \(19,\) but must be \(20,\)"),
        ({"x": _uint8_images(), "y": np.arange(20) - 1}, {"labels_key": "y"}, "non-negative"),
        ({"x": _uint8_images((3, 4, 4))}, {"test_fraction": 0.1}, "between 1 and 2 of the 3 images, got 0"),
        ({"x": np.zeros((0, 4, 4), dtype=np.uint8)}, {}, "is empty"),
    ],
)
def test_bad_npz_images_are_named(tmp_path, arrays, kwargs, message):
    with pytest.raises(ValueError, match=message):
        npz_image_dataset(_save(tmp_path, **arrays), **kwargs)


def test_missing_npz_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data file"):
        npz_image_dataset(tmp_path / "nothing.npz")


# ------------------------------------------------------------------------------ labelled Dataset
def _images(n, seed=0):
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_classes": None}, "give all three or none"),
        ({"test_labels": None}, "give all three or none"),
        ({"n_classes": 0}, "n_classes must be an integer >= 1"),
        ({"train_labels": torch.zeros(5, dtype=torch.long)}, r"train_labels must be an int64 tensor of shape \(6,\)"),
        ({"test_labels": torch.zeros(3, dtype=torch.int32)}, r"test_labels must be an int64 tensor of shape \(3,\), one label per test sample; got torch.int32"),
        ({"train_labels": torch.tensor([0, 1, 2, 3, 0, 1])}, r"train_labels must lie in 0..2 \(n_classes=3\); got values from 0 to 3"),
    ],
)
def test_dataset_label_validation(kwargs, message):
    args = {"train_labels": torch.tensor([0, 1, 2, 0, 1, 2]), "test_labels": torch.tensor([2, 1, 0]), "n_classes": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        Dataset(_images(6), _images(3, 1), "labelled", **args)


def test_labelled_dataset_keeps_its_labels():
    ds = Dataset(_images(6), _images(3, 1), "labelled", train_labels=torch.tensor([0, 1, 2, 0, 1, 2]), test_labels=torch.tensor([2, 1, 0]), n_classes=3)
    assert ds.n_classes == 3 and ds.train_labels.tolist() == [0, 1, 2, 0, 1, 2] and "n_classes=3" in repr(ds)
