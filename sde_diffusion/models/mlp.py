"""A time-conditioned MLP for vector data of any shape ``(B, *dims)``."""

from __future__ import annotations

import math

from torch import Tensor, nn

from .._checks import check_range
from .embeddings import GaussianFourierEmbedding


class TimeMLP(nn.Module):
    """Raw network ``net(x, t)`` for data of shape ``(B, *data_shape)``; output has the same shape.

    Args:
        data_shape: the shape of one sample, a tuple (not an int): ``(2,)`` for 2-D points,
            ``(1, 8, 8)`` for tiny images (``Dataset.data_shape``); ``TimeMLP(2)`` is refused.
        hidden_dim, n_layers: width and number of the hidden layers.
        time_embedding: a module mapping ``t`` ``(B,)`` to ``(B, dim)`` with an integer ``dim``
            attribute; default :class:`~sde_diffusion.models.GaussianFourierEmbedding`.
        learn_variance: also output the variance interpolation (below).

    The input is flattened to ``(B, D)``; the time embedding is projected and added to every hidden
    layer (as DDPM adds it to every block). SiLU activations; the last layer starts at zero so the
    initial output is 0, which is a sensible start for every parameterization.

    ``learn_variance=True`` doubles the output: ``(B, 2 d_0, *data_shape[1:])``, the prediction
    followed by a second block for the variance interpolation of
    :class:`~sde_diffusion.models.LearnedVarianceParameterization` (Nichol & Dhariwal 2021, Sec. 3.1).
    """

    def __init__(
        self,
        data_shape: tuple[int, ...] | list[int],
        hidden_dim: int = 256,
        n_layers: int = 4,
        time_embedding: nn.Module | None = None,
        learn_variance: bool = False,
    ):
        super().__init__()
        if isinstance(data_shape, int) or not hasattr(data_shape, "__iter__"):
            raise ValueError(
                f"data_shape must be a tuple such as (2,) for 2-D points or (1, 8, 8) for images, got {data_shape!r}; "
                f"write TimeMLP(({data_shape!r},), ...)"
            )
        data_shape = tuple(int(d) for d in data_shape)
        if not data_shape or any(d < 1 for d in data_shape):
            raise ValueError(f"data_shape must be a non-empty tuple of positive sizes, got {data_shape}")
        hidden_dim = check_range("hidden_dim", hidden_dim, low=1, integer=True)
        n_layers = check_range("n_layers", n_layers, low=1, integer=True)
        self.data_shape = data_shape
        self.learn_variance = bool(learn_variance)
        self.out_shape = (data_shape[0] * (1 + self.learn_variance), *data_shape[1:])
        d = math.prod(data_shape)
        self.time_embedding = time_embedding if time_embedding is not None else GaussianFourierEmbedding()
        emb_dim = getattr(self.time_embedding, "dim", None)
        if not isinstance(emb_dim, int):
            raise ValueError(
                f"TimeMLP time_embedding must be a module mapping t (B,) to (B, dim) with an integer dim "
                f"attribute (e.g. GaussianFourierEmbedding), got {type(self.time_embedding).__name__}"
            )
        self.inp = nn.Linear(d, hidden_dim)
        self.time_proj = nn.Linear(emb_dim, hidden_dim * n_layers)
        self.hidden = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(n_layers))
        self.out = nn.Linear(hidden_dim, d * (1 + self.learn_variance))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"TimeMLP was built for samples of shape {self.data_shape}, got input of shape {tuple(x.shape)}")
        h = self.inp(x.reshape(x.shape[0], -1))
        temb = self.time_proj(self.act(self.time_embedding(t))).chunk(len(self.hidden), dim=1)
        for layer, te in zip(self.hidden, temb, strict=True):
            h = layer(self.act(h + te))
        return self.out(self.act(h)).reshape(x.shape[0], *self.out_shape)
