"""Data module: toy sets against their exact moments and densities, Dataset validation, the npz
loader and its errors, and the conf/data configs.

Statistical tolerances are ``Z = 5`` standard errors of the estimate: for one check the chance of a
false failure under a fresh seed is below 1e-6 (normal tail), and the seeds are fixed anyway.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import sde_diffusion.data as sdd
from sde_diffusion.data import Checkerboard, Dataset, GaussianMixture, npz_dataset, toy_dataset

Z = 5.0
CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_mean_within(values: torch.Tensor, expected, what: str) -> None:
    """Sample mean over axis 0 of ``values`` equals ``expected`` within ``Z`` standard errors,
    the standard error being estimated from the same sample."""
    values = values.double()
    expected = torch.as_tensor(expected, dtype=torch.float64)
    se = values.std(dim=0) / math.sqrt(values.shape[0])
    err = (values.mean(dim=0) - expected).abs()
    assert (err <= Z * se).all(), f"{what}: mean {values.mean(0)} vs exact {expected} (standard error {se})"


# ------------------------------------------------------------------------------------ toy sets
# Exact mean and E|x|^2 of every toy, from its generating formula (docstrings in toys.py):
# Gaussian noise of std s adds 2 s^2 to E|x|^2 and nothing to the mean.
SWISS_T2 = (1.5 * math.pi) ** 2 * (1 + 2 + 4 / 3)  # E t^2, t = 1.5 pi (1 + 2u)
EXACT_MOMENTS = {
    # each coordinate is uniform on [-4, 4] (every row and column holds two black squares)
    "checkerboard": ((0.0, 0.0), 2 * 16 / 3),
    "eight_gaussians": ((0.0, 0.0), sdd.EIGHT_GAUSSIANS_RADIUS**2 + 2 * sdd.EIGHT_GAUSSIANS_STD**2),
    # moon points p: E p = (1/2, 1/4), E|p|^2 = (1 + 9/4 - 2/pi) / 2; x = 2 (p + 0.1 z) - (1, 0.2)
    "two_moons": ((0.0, 0.3), 4 * (1.625 - 1 / math.pi) - 4 * (0.5 + 0.05) + 1.04 + 8 * 0.01),
    # arms are mirror images; |x|^2 = phi^2 / 9 with E phi^2 = 9 pi^2 E u
    "spirals": ((0.0, 0.0), math.pi**2 / 2 + 2 * 0.1**2),
    "rings": ((0.0, 0.0), 0.75**2 * (1 + 4 + 9 + 16) / 4 + 2 * 0.08**2),
    # E[t cos t] = 6 pi / (3 pi) = 2 and E[t sin t] = 2 / (3 pi), then divided by 5
    "swiss_roll": ((2 / 5, 2 / (15 * math.pi)), SWISS_T2 / 25 + 2 * 0.2**2),
    # rotations by 2 pi k / 5 average to zero and keep |f|^2: E|f|^2 = 1 + 0.3^2 + 0.1^2
    "pinwheel": ((0.0, 0.0), 4 * (1 + 0.3**2 + 0.1**2)),
}


def test_every_toy_has_exact_moments_listed():
    assert set(EXACT_MOMENTS) == set(sdd.TOY_NAMES)


@pytest.mark.parametrize("name", sdd.TOY_NAMES)
def test_toy_shape_dtype_and_extent(name):
    x = getattr(sdd, name)(4_000, _gen())
    assert x.shape == (4_000, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    # roughly fills [-4, 4]^2: nothing far outside, and each coordinate spans at least 3 units
    assert x.abs().max() < 5.0
    assert (x.max(0).values - x.min(0).values > 3.0).all()


@pytest.mark.parametrize("name", sdd.TOY_NAMES)
def test_toy_moments_match_closed_forms(name):
    x = getattr(sdd, name)(20_000, _gen(1))
    mean, second = EXACT_MOMENTS[name]
    _assert_mean_within(x, mean, f"{name} mean")
    _assert_mean_within((x.double() ** 2).sum(1, keepdim=True), [second], f"{name} E|x|^2")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_toy_rejects_bad_sample_counts(bad):
    with pytest.raises(ValueError, match="the number of samples must be an integer >= 1"):
        sdd.two_moons(bad, _gen())


def test_toy_dataset_sizes_and_densities():
    ds = toy_dataset("checkerboard", n_train=300, n_test=70)
    assert ds.train.shape == (300, 2) and ds.test.shape == (70, 2) and ds.data_shape == (2,)
    assert ds.name == "checkerboard" and isinstance(ds.distribution, Checkerboard)
    assert isinstance(toy_dataset("eight_gaussians", 10, 10).distribution, GaussianMixture)
    assert toy_dataset("spirals", 10, 10).distribution is None
    assert ds.levels is None and ds.interval_width is None and ds.shift is None


def test_toy_dataset_determinism_and_independent_streams():
    a = toy_dataset("pinwheel", n_train=500, n_test=200, seed=3)
    b = toy_dataset("pinwheel", n_train=500, n_test=200, seed=3)
    c = toy_dataset("pinwheel", n_train=500, n_test=200, seed=4)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train) and not torch.equal(a.test, c.test)
    # continuous data: a shared row could only come from a shared stream
    assert torch.cdist(a.train, a.test).min() > 0
    # the test stream is its own: it does not move when the train split grows
    longer = toy_dataset("pinwheel", n_train=900, n_test=200, seed=3)
    assert torch.equal(longer.test, a.test)


@pytest.mark.parametrize("seed", [-1, 1.5])
def test_toy_dataset_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        toy_dataset("rings", 10, 10, seed=seed)


def test_toy_dataset_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown toy data set 'moons'") as err:
        toy_dataset("moons")
    for name in sdd.TOY_NAMES:
        assert name in str(err.value)


# -------------------------------------------------------------------------------- checkerboard
def test_checkerboard_samples_fill_black_squares_evenly():
    n = 40_000
    x = sdd.checkerboard(n, _gen(2))
    board = Checkerboard()
    assert torch.equal(board.log_prob(x), torch.full((n,), -math.log(32.0)))
    cell = torch.floor((x + 4) / 2).long()
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16).reshape(4, 4)
    black = (torch.arange(4)[:, None] + torch.arange(4)[None]) % 2 == 0
    assert (counts[~black] == 0).all()
    # each black count is Binomial(n, 1/8)
    sd = math.sqrt(n * (1 / 8) * (7 / 8))
    assert ((counts[black] - n / 8).abs() <= Z * sd).all(), counts
    # within its square a sample is uniform: local coordinates have mean 1/2 and variance 1/12
    local = (x + 4) / 2 - cell
    _assert_mean_within(local, [0.5, 0.5], "local coordinate")
    _assert_mean_within((local.double() - 0.5) ** 2, [1 / 12, 1 / 12], "local coordinate variance")


def test_checkerboard_log_prob_at_known_points():
    pts = torch.tensor(
        [[-3.0, -3.0], [-1.0, -1.0], [3.5, 3.5], [-4.0, -4.0],  # black (corner belongs to its square)
         [-1.0, -3.0], [3.0, -3.0], [-2.0, -4.0],  # white
         [4.0, 0.0], [0.0, 4.5], [-4.5, -3.0]],  # off the board
        dtype=torch.float64,
    )
    lp = Checkerboard().log_prob(pts)
    assert lp.dtype == torch.float64
    assert torch.equal(lp[:4], torch.full((4,), -math.log(32.0), dtype=torch.float64))
    assert torch.isneginf(lp[4:]).all()
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        Checkerboard().log_prob(torch.zeros(3, 1, 8, 8))


def test_checkerboard_density_integrates_to_one_with_entropy_ln32():
    # midpoint rule on a grid aligned with the squares' edges: each cell lies in one square, so the
    # quadrature is exact and only float64 rounding (~1e-12) remains
    h = 0.05
    c = torch.arange(-5 + h / 2, 5, h, dtype=torch.float64)
    grid = torch.cartesian_prod(c, c)
    lp = Checkerboard().log_prob(grid)
    p = lp.exp()
    assert abs(p.sum().item() * h**2 - 1.0) < 1e-9
    entropy = -(torch.where(p > 0, p * lp, torch.zeros_like(p))).sum().item() * h**2
    assert abs(entropy - math.log(32.0)) < 1e-9
    assert Checkerboard().entropy == pytest.approx(math.log(32.0), abs=1e-15)


# ----------------------------------------------------------------------------- eight gaussians
def test_mixture_scalar_covs_are_standard_deviations():
    # covs=0.3 is a standard deviation despite the name: covariance 0.09 I, samples spread 0.3
    mix = GaussianMixture([1.0, 1.0], [[0.0, 0.0], [10.0, 10.0]], covs=0.3)
    assert torch.equal(mix.covs, torch.full((2,), 0.09, dtype=torch.float64).diag()[None].expand(2, 2, 2))
    x = mix.sample(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    near = x[x[:, 0] < 5]
    assert near.std(0) == pytest.approx(torch.full((2,), 0.3, dtype=torch.float64), rel=0.03)  # s.e. ~0.7 %
    per_component = GaussianMixture([1.0, 1.0], [[0.0, 0.0], [10.0, 10.0]], covs=[0.3, 2.0])
    assert per_component.covs[:, 0, 0].tolist() == pytest.approx([0.09, 4.0])


@pytest.mark.parametrize(
    "covs, message",
    [
        (-0.3, "covs as a scalar or \\(K,\\) = \\(2,\\) holds positive standard deviations"),
        (0.0, "positive standard deviations"),
        ([0.1, 0.2, 0.3], "positive standard deviations of isotropic components, got \\[0.1, 0.2, 0.3\\]"),
        (torch.eye(2), "or be a scalar or \\(2,\\) standard deviations"),
    ],
)
def test_mixture_bad_covs_name_what_a_scalar_means(covs, message):
    with pytest.raises(ValueError, match=message) as err:
        GaussianMixture([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], covs=covs)
    assert "\n" not in str(err.value)


def test_eight_gaussians_match_their_mixture():
    gmm = sdd.eight_gaussians_mixture()
    assert gmm.n_components == 8
    assert torch.allclose(gmm.means.norm(dim=1), torch.full((8,), sdd.EIGHT_GAUSSIANS_RADIUS, dtype=torch.float64))
    x = sdd.eight_gaussians(20_000, _gen(5)).double()
    _assert_mean_within(x, gmm.mean(), "eight gaussians mean")
    centred = x - gmm.mean()
    products = (centred[:, :, None] * centred[:, None, :]).reshape(-1, 4)
    _assert_mean_within(products, gmm.covariance().reshape(4), "eight gaussians covariance")
    # E_p[p(k | x)] = w_k exactly; responsibilities lie in [0, 1], so their variance is at most
    # w_k (1 - w_k), the Bernoulli variance used as the (conservative) standard error
    resp = gmm.responsibilities(x).mean(0)
    w = gmm.weights
    assert ((resp - w).abs() <= Z * (w * (1 - w) / x.shape[0]).sqrt()).all(), resp


# ----------------------------------------------------------------------------------- Dataset
def _points(n=10, shape=(2,), seed=0):
    return torch.randn(n, *shape, generator=_gen(seed))


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_dataset_holds_points_and_images(shape):
    ds = Dataset(_points(6, shape), _points(3, shape, 1), "toy", levels=256, interval_width=2.0)
    assert ds.data_shape == shape
    x = _points(4, shape, 2)
    assert ds.unstandardize(x) is x
    scale, shift = torch.full(shape, 2.0), torch.full(shape, -1.0)
    scaled = Dataset(ds.train, ds.test, "toy", shift=shift, scale=scale)
    assert torch.equal(scaled.unstandardize(x), 2 * x - 1)
    assert "toy" in repr(ds) and "standardized" in repr(scaled)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"train": torch.zeros(4, 2, dtype=torch.int64)}, TypeError, "floating point"),
        ({"train": torch.zeros(4, 2, dtype=torch.float64)}, TypeError, r"float32, got torch.float64; convert with .float\(\)"),
        ({"train": torch.tensor([[0.0, float("nan")], [1.0, 1.0]])}, ValueError, "NaN or infinite values in 1 of 2 samples"),
        ({"test": torch.zeros(0, 2)}, ValueError, "test split .* is empty"),
        ({"train": torch.zeros(4)}, ValueError, r"x\[:, None\]"),
        ({"test": torch.zeros(4, 3)}, ValueError, r"train samples have shape \(2,\) but test samples have \(3,\)"),
        ({"name": ""}, ValueError, "non-empty string"),
        ({"distribution": object()}, TypeError, "log_prob"),
        ({"levels": 256}, ValueError, "give both or neither"),
        ({"levels": 1, "interval_width": 2.0}, ValueError, "levels must be an integer >= 2"),
        ({"levels": 256, "interval_width": -1.0}, ValueError, "positive number"),
        ({"shift": torch.zeros(2)}, ValueError, "give both or neither"),
        ({"shift": torch.zeros(3), "scale": torch.ones(3)}, ValueError, r"sample shape \(2,\)"),
        ({"shift": torch.zeros(2), "scale": torch.tensor([1.0, 0.0])}, ValueError, "scale finite and positive"),
    ],
)
def test_dataset_validation_names_the_problem(kwargs, error, message):
    args = {"train": _points(4), "test": _points(3, seed=1), "name": "toy"} | kwargs
    with pytest.raises(error, match=message):
        Dataset(**args)


# ----------------------------------------------------------------------------------- npz files
def _save(tmp_path, name="data.npz", **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(len(x), -1)
    return flat[flat[:, 0].argsort()]


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_npz_round_trip_splits_and_shuffles(tmp_path, shape):
    raw = np.random.default_rng(0).normal(size=(50, *shape))
    path = _save(tmp_path, x=raw, labels=np.arange(50))
    ds = npz_dataset(path, test_fraction=0.2, seed=1)
    assert ds.name == "data" and ds.data_shape == shape and ds.train.dtype == torch.float32
    assert len(ds.test) == 10 and len(ds.train) == 40
    # the splits partition the rows (continuous values: the first feature identifies a row)
    together = torch.cat([ds.train, ds.test])
    assert torch.equal(_sorted_rows(together), _sorted_rows(torch.from_numpy(raw).float()))
    assert not torch.equal(together, torch.from_numpy(raw).float())  # shuffled
    again, other = npz_dataset(path, test_fraction=0.2, seed=1), npz_dataset(str(path), test_fraction=0.2, seed=2)
    assert torch.equal(again.train, ds.train) and not torch.equal(other.train, ds.train)


def test_npz_integer_arrays_become_float32(tmp_path):
    raw = np.arange(40, dtype=np.uint8).reshape(20, 2)
    ds = npz_dataset(_save(tmp_path, pixels=raw), key="pixels", test_fraction=0.25)
    assert ds.train.dtype == torch.float32 and len(ds.test) == 5
    assert torch.equal(_sorted_rows(torch.cat([ds.train, ds.test])), torch.from_numpy(raw).float())


@pytest.mark.parametrize("shape", [(3,), (1, 8, 8)])
def test_npz_standardize_uses_train_statistics(tmp_path, shape):
    rng = np.random.default_rng(1)
    raw = 3.0 + 5.0 * rng.normal(size=(200, *shape))
    raw.reshape(200, -1)[:, -1] = 7.0  # a constant feature keeps scale 1 and is only shifted
    ds = npz_dataset(_save(tmp_path, x=raw), test_fraction=0.1, standardize=True)
    assert ds.shift.shape == shape and ds.scale.shape == shape
    # float32 data of size ~10: mean and std are exact up to float32 rounding (~1e-6 relative)
    assert ds.train.mean(0).abs().max() < 1e-5
    std = ds.train.std(0, correction=0).flatten()
    assert torch.allclose(std[:-1], torch.ones_like(std[:-1]), atol=1e-5) and std[-1] == 0
    assert ds.scale.flatten()[-1] == 1 and ds.shift.flatten()[-1] == 7
    raw_rows = _sorted_rows(torch.from_numpy(raw).float())
    back = _sorted_rows(ds.unstandardize(torch.cat([ds.train, ds.test])))
    assert torch.allclose(back, raw_rows, atol=1e-5)


def test_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data file at .*nothing.npz"):
        npz_dataset(tmp_path / "nothing.npz")


@pytest.mark.parametrize("kind", ["text", "npy"])
def test_npz_rejects_other_files(tmp_path, kind):
    path = tmp_path / "data.npz"
    if kind == "text":
        path.write_text("1,2\n3,4\n")
    else:
        with open(path, "wb") as f:
            np.save(f, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"not an .npz archive; save your data with numpy.savez"):
        npz_dataset(path)


def test_npz_missing_key_lists_keys(tmp_path):
    with pytest.raises(ValueError, match=r"no array 'x'; the arrays present are \['images', 'labels'\]"):
        npz_dataset(_save(tmp_path, images=np.zeros((4, 2)), labels=np.zeros(4)))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.array([[1, "a"], [2, "b"]], dtype=object), "dtype object"),
        (np.array([["a", "b"], ["c", "d"]]), "dtype <U1 but data must be real numbers"),
        (np.ones((4, 2), dtype=bool), "dtype bool but data must be real numbers"),
        (np.ones((4, 2), dtype=complex), "dtype complex128 but data must be real numbers"),
    ],
)
def test_npz_rejects_non_numeric_arrays(tmp_path, array, message):
    with pytest.raises(ValueError, match=message):
        npz_dataset(_save(tmp_path, x=array))


def test_npz_reports_nonfinite_rows(tmp_path):
    raw = np.ones((10, 3))
    raw[3, 1], raw[3, 2], raw[7, 0] = np.nan, np.inf, -np.inf
    with pytest.raises(ValueError, match=r"NaN or infinite values in 2 of 10 samples \(first at index 3\)"):
        npz_dataset(_save(tmp_path, x=raw))
    with pytest.raises(ValueError, match="float32 range"):
        npz_dataset(_save(tmp_path, "big.npz", x=np.full((10, 2), 1e39)))


@pytest.mark.parametrize(
    "shape, message",
    [((10,), r"x\[:, None\]"), ((0,), r"x\[:, None\]"), ((0, 3), "is empty"), ((5, 0), "is empty")],
)
def test_npz_rejects_bad_shapes(tmp_path, shape, message):
    with pytest.raises(ValueError, match=message):
        npz_dataset(_save(tmp_path, x=np.zeros(shape)))


@pytest.mark.parametrize("rows, fraction", [(1, 0.5), (3, 0.1), (3, 0.9)])
def test_npz_needs_a_row_in_each_split(tmp_path, rows, fraction):
    with pytest.raises(ValueError, match="too few to split .* both splits need at least 1"):
        npz_dataset(_save(tmp_path, x=np.zeros((rows, 2))), test_fraction=fraction)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_npz_rejects_bad_test_fraction(tmp_path, fraction):
    with pytest.raises(ValueError, match=r"test_fraction must lie in \(0, 1\)"):
        npz_dataset(_save(tmp_path, x=np.zeros((10, 2))), test_fraction=fraction)


# ------------------------------------------------------------------------------------- configs
def test_data_configs_cover_every_source():
    assert {p.stem for p in CONF_DATA.glob("*.yaml")} == set(sdd.TOY_NAMES) | {"npz"} | IMAGE_CONFIGS


# tested in tests/test_images.py, test_super_resolution.py (digits_low_res), test_latent_diffusion.py
# (latents) and test_finetune.py (digits_few)
IMAGE_CONFIGS = {"digits", "npz_images", "digits_low_res", "digits_few", "latents"}


@pytest.mark.parametrize("path", sorted(p for p in CONF_DATA.glob("*.yaml") if p.stem not in IMAGE_CONFIGS), ids=lambda p: p.stem)
def test_data_config_instantiates(path, tmp_path):
    cfg = OmegaConf.load(path)
    if path.stem == "npz":
        assert OmegaConf.is_missing(cfg, "path")
        cfg.path = str(_save(tmp_path, x=np.random.default_rng(0).normal(size=(30, 2))))
    ds = instantiate(cfg)
    assert isinstance(ds, Dataset)
    if path.stem != "npz":
        assert ds.name == path.stem and ds.train.shape == (cfg.n_train, 2) and ds.test.shape == (cfg.n_test, 2)
