"""2-D toy data sets, scaled to roughly fill ``[-4, 4]^2`` like the versions in FFJORD
(Grathwohl et al. 2019), with exact densities where one exists in closed form.

Every toy is a function ``toy(n, generator) -> (n, 2)`` float32 drawn with batched torch ops, so a
fixed ``torch.Generator`` reproduces it. :func:`toy_dataset` names them for configs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._checks import check_range
from .dataset import Dataset, Density
from .gmm import GaussianMixture

EIGHT_GAUSSIANS_RADIUS = 2.0 * math.sqrt(2.0)
"""Distance of the 8 component means from the origin (FFJORD's 4, scaled by 1/sqrt(2))."""
EIGHT_GAUSSIANS_STD = math.sqrt(2.0) / 4.0
"""Isotropic standard deviation of each of the 8 components (FFJORD's 0.5, scaled by 1/sqrt(2))."""


def _check_n(n: int) -> int:
    return check_range("the number of samples", n, low=1, integer=True)


def _randn(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.randn(n, 2, generator=generator)


def _polar(radius: Tensor, angle: Tensor) -> Tensor:
    """``(n, 2)`` points ``radius * (cos angle, sin angle)`` from ``(n,)`` radii and angles."""
    return radius[:, None] * torch.stack((angle.cos(), angle.sin()), dim=1)


class Checkerboard:
    """Uniform density on the 8 black squares of a 4 x 4 board of side-2 squares on ``[-4, 4]^2``.

    Square ``(i, j)``, ``i, j in {0..3}``, covers ``[-4 + 2i, -2 + 2i) x [-4 + 2j, -2 + 2j)`` and is
    black when ``i + j`` is even (FFJORD's board). The black area is 32, so ``p = 1/32`` on black
    squares and 0 elsewhere; the entropy is ``ln 32`` nats (docs/references.md, exact test oracles).
    """

    low = -4.0
    side = 2.0
    cells = 4
    area = side**2 * cells**2 / 2

    @property
    def entropy(self) -> float:
        """Differential entropy ``-E log p = ln 32`` nats."""
        return math.log(self.area)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``(n, 2)`` float32: a black square uniformly at random, then a uniform point in it."""
        n = _check_n(n)
        k = torch.randint(0, self.cells**2 // 2, (n,), generator=generator)
        i = k % self.cells
        j = 2 * (k // self.cells) + i % 2  # i + j even: a black square
        corner = self.low + self.side * torch.stack((i, j), dim=1).float()
        x = corner + self.side * torch.rand(n, 2, generator=generator)
        # float32 rounding can carry a point onto the square's far edge, which belongs to the next
        # square; keep it one ulp inside so every sample has log_prob -ln 32
        return torch.minimum(x, torch.nextafter(corner + self.side, corner))

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` in nats, ``(B,)``: ``-ln 32`` on black squares, ``-inf`` elsewhere."""
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"the checkerboard is 2-D: expected points of shape (B, 2), got {tuple(x.shape)}")
        cell = torch.floor((x - self.low) / self.side)
        on_board = ((cell >= 0) & (cell < self.cells)).all(dim=1)
        black = on_board & (cell.sum(dim=1) % 2 == 0)
        inside = torch.full_like(x[:, 0], -math.log(self.area))
        return torch.where(black, inside, torch.full_like(inside, -math.inf))

    def __repr__(self) -> str:
        return "Checkerboard()"


def eight_gaussians_mixture() -> GaussianMixture:
    """The exact density of :func:`eight_gaussians`: equal weights, means at radius
    :data:`EIGHT_GAUSSIANS_RADIUS` and angles ``k pi / 4``, isotropic std :data:`EIGHT_GAUSSIANS_STD`."""
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    means = _polar(torch.full((8,), EIGHT_GAUSSIANS_RADIUS, dtype=torch.float64), angle)
    return GaussianMixture(torch.ones(8), means, torch.tensor(EIGHT_GAUSSIANS_STD))


def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``(n, 2)`` samples of :class:`Checkerboard` (uniform on 8 black squares, entropy ``ln 32``)."""
    return Checkerboard().sample(n, generator=generator)


def eight_gaussians(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``(n, 2)`` samples of :func:`eight_gaussians_mixture` (8 Gaussians on a circle)."""
    return eight_gaussians_mixture().sample(_check_n(n), generator=generator)


def two_moons(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``(n, 2)`` two interleaved half circles, equally likely: ``(cos a, sin a)`` and
    ``(1 - cos a, 1/2 - sin a)``, ``a ~ U(0, pi)``, plus N(0, 0.1^2) noise, then ``2 x - (1, 0.2)``."""
    n = _check_n(n)
    a = math.pi * torch.rand(n, generator=generator)
    lower = torch.rand(n, generator=generator) < 0.5
    upper_moon = torch.stack((a.cos(), a.sin()), dim=1)
    lower_moon = torch.tensor([1.0, 0.5]) - upper_moon
    x = torch.where(lower[:, None], lower_moon, upper_moon) + 0.1 * _randn(n, generator)
    return 2.0 * x - torch.tensor([1.0, 0.2])


def spirals(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``(n, 2)`` two interleaved spiral arms, equally likely, each ``± phi (-cos phi, sin phi) / 3``
    with ``phi = 3 pi sqrt(u)`` (uniform along the arc, 1.5 turns, radius up to ``pi``), plus
    N(0, 0.1^2) noise."""
    n = _check_n(n)
    phi = 3 * math.pi * torch.rand(n, generator=generator).sqrt()
    arm = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    return _polar(arm * phi / 3, math.pi - phi) + 0.1 * _randn(n, generator)


def rings(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``(n, 2)`` four concentric circles of radii 0.75, 1.5, 2.25 and 3, equally likely, angle
    uniform, plus N(0, 0.08^2) noise."""
    n = _check_n(n)
    radius = 0.75 * (1 + torch.randint(0, 4, (n,), generator=generator)).float()
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    return _polar(radius, angle) + 0.08 * _randn(n, generator)


def swiss_roll(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``(n, 2)`` the 2-D swiss roll ``t (cos t, sin t) / 5``, ``t = 1.5 pi (1 + 2u)``, plus
    N(0, 0.2^2) noise (scikit-learn's roll with unit noise, projected and divided by 5)."""
    n = _check_n(n)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    return _polar(t / 5, t) + 0.2 * _randn(n, generator)


def pinwheel(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``(n, 2)`` a pinwheel of 5 arms: ``f ~ N((1, 0), diag(0.3^2, 0.1^2))`` rotated by
    ``2 pi k / 5 + exp(f_1) / 4``, ``k`` uniform in ``{0..4}``, then scaled by 2."""
    n = _check_n(n)
    f = _randn(n, generator) * torch.tensor([0.3, 0.1]) + torch.tensor([1.0, 0.0])
    k = torch.randint(0, 5, (n,), generator=generator)
    a = 2 * math.pi * k / 5 + 0.25 * f[:, 0].exp()
    cos, sin = a.cos(), a.sin()
    return 2.0 * torch.stack((cos * f[:, 0] - sin * f[:, 1], sin * f[:, 0] + cos * f[:, 1]), dim=1)


class _Toy(NamedTuple):
    sample: Callable[[int, torch.Generator | None], Tensor]
    density: Callable[[], Density] | None


_TOYS: dict[str, _Toy] = {
    "checkerboard": _Toy(checkerboard, Checkerboard),
    "eight_gaussians": _Toy(eight_gaussians, eight_gaussians_mixture),
    "two_moons": _Toy(two_moons, None),
    "spirals": _Toy(spirals, None),
    "rings": _Toy(rings, None),
    "swiss_roll": _Toy(swiss_roll, None),
    "pinwheel": _Toy(pinwheel, None),
}

TOY_NAMES: tuple[str, ...] = tuple(_TOYS)
"""Names accepted by :func:`toy_dataset`."""


def _split_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """Independent train and test generators spawned from ``seed`` (numpy's SeedSequence), so the
    test split neither repeats nor depends on the train split (nor on its size)."""
    seed = check_range("seed", seed, low=0, integer=True)
    children = np.random.SeedSequence(int(seed)).spawn(2)
    train, test = (torch.Generator().manual_seed(int(c.generate_state(1, np.uint64)[0])) for c in children)
    return train, test


def toy_dataset(name: str, n_train: int = 50_000, n_test: int = 5_000, seed: int = 0) -> Dataset:
    """A :class:`Dataset` of the 2-D toy ``name`` (one of :data:`TOY_NAMES`) with ``n_train`` and
    ``n_test`` samples from independent streams of ``seed``; ``distribution`` is the exact density
    for ``checkerboard`` and ``eight_gaussians``, None otherwise."""
    if name not in _TOYS:
        raise ValueError(f"unknown toy data set {name!r}; valid names: {', '.join(TOY_NAMES)}")
    toy = _TOYS[name]
    train_gen, test_gen = _split_generators(seed)
    return Dataset(
        train=toy.sample(n_train, train_gen),
        test=toy.sample(n_test, test_gen),
        name=name,
        distribution=None if toy.density is None else toy.density(),
    )
