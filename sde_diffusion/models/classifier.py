"""Time-conditioned classifiers ``p_phi(y | x_t, t)`` of noisy data, for classifier guidance
(Dhariwal & Nichol 2021, Sec. 4 and App. B: the U-Net's encoder, trained on ``x_t`` from the
forward process).

Both networks return logits ``(B, K)`` from ``forward(x, t)`` and the log-probability of given labels
``log p_phi(y | x_t, t)`` ``(B,)`` from ``forward(x, t, y)``: the second form is how the Trainer
calls a model trained on labelled data, so a classifier trains through the same loop, checkpoints
and resume as a score model (:func:`~sde_diffusion.losses.classifier_loss`), and how
:class:`~sde_diffusion.samplers.ClassifierGuidedScore` differentiates it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._shapes import batch_time
from .blocks import ResAttnBlock, group_norm
from .embeddings import GaussianFourierEmbedding
from .unet import _check_attention, _level_resolutions, _positive_int, build_encoder, run_encoder


def _time_dim(embedding: nn.Module, who: str) -> int:
    dim = getattr(embedding, "dim", None)
    if not isinstance(embedding, nn.Module) or not isinstance(dim, int):
        raise ValueError(
            f"{who} time_embedding must be a module mapping t (B,) to (B, dim) with an integer dim attribute, got {type(embedding).__name__}"
        )
    return dim


class _Classifier(nn.Module):
    """Common part: logits from :meth:`logits`, ``forward(x, t, y=None)`` as in the module docstring."""

    n_classes: int
    data_shape: tuple[int, ...]
    is_classifier = True
    """Marks a classifier run for the apps (``sde-train task=classifier``, ``sde-sample classifier_dir``)."""

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"{type(self).__name__} was built for inputs of shape {self.data_shape}, got {tuple(x.shape)}")
        logits = self.logits(x, batch_time(t, x))
        if y is None:
            return logits
        if y.shape != (x.shape[0],) or y.dtype != torch.long or bool(((y < 0) | (y >= self.n_classes)).any()):
            raise ValueError(
                f"labels y must be int64 of shape ({x.shape[0]},) with values in 0..{self.n_classes - 1}; a classifier has no "
                f"null label (train it with train.label_dropout=0)"
            )
        return torch.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0]


class TimeClassifierMLP(_Classifier):
    """An MLP classifier of noisy vectors ``(B, *data_shape)``: the time embedding added to every
    hidden layer (as :class:`~sde_diffusion.models.TimeMLP`), SiLU, logits ``(B, n_classes)``."""

    def __init__(
        self,
        data_shape: Sequence[int],
        n_classes: int,
        hidden_dim: int = 128,
        n_layers: int = 3,
        time_embedding: nn.Module | None = None,
    ):
        super().__init__()
        self.data_shape = tuple(int(d) for d in data_shape)
        self.n_classes = _positive_int("n_classes", n_classes)
        _positive_int("hidden_dim", hidden_dim)
        _positive_int("n_layers", n_layers)
        self.time_embedding = time_embedding if time_embedding is not None else GaussianFourierEmbedding()
        emb_dim = _time_dim(self.time_embedding, "TimeClassifierMLP")
        self.inp = nn.Linear(math.prod(self.data_shape), hidden_dim)
        self.time_proj = nn.Linear(emb_dim, hidden_dim * n_layers)
        self.hidden = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(n_layers))
        self.out = nn.Linear(hidden_dim, self.n_classes)
        self.act = nn.SiLU()

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.inp(x.reshape(x.shape[0], -1))
        temb = self.time_proj(self.act(self.time_embedding(t))).chunk(len(self.hidden), dim=1)
        for layer, te in zip(self.hidden, temb, strict=True):
            h = layer(self.act(h + te))
        return self.out(self.act(h))


class UNetClassifier(_Classifier):
    """The encoder and middle of :class:`~sde_diffusion.models.UNet` (same arguments, same blocks),
    then GroupNorm, SiLU, global average pooling and a linear layer to ``n_classes`` logits: the
    noisy-image classifier of Dhariwal & Nichol 2021 (App. B, with average instead of attention
    pooling). Input ``(B, C, H, W)``."""

    def __init__(
        self,
        data_shape: Sequence[int],
        n_classes: int,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        n_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
        time_embedding: nn.Module | None = None,
    ):
        super().__init__()
        self.data_shape = tuple(int(d) for d in data_shape)
        if len(self.data_shape) != 3:
            raise ValueError(f"UNetClassifier needs data_shape (C, H, W), got {self.data_shape}; for vectors use TimeClassifierMLP")
        self.n_classes = _positive_int("n_classes", n_classes)
        channel_mult = [_positive_int("channel_mult entries", m) for m in channel_mult]
        resolutions = _level_resolutions(self.data_shape, len(channel_mult))  # type: ignore[arg-type]
        attention = _check_attention(attention_resolutions, resolutions)
        self.time_embedding = time_embedding if time_embedding is not None else GaussianFourierEmbedding()
        emb_dim = 4 * _positive_int("channels", channels)
        self.time_mlp = nn.Sequential(
            nn.Linear(_time_dim(self.time_embedding, "UNetClassifier"), emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def block(c_in: int, c_out: int, res: int) -> ResAttnBlock:
            return ResAttnBlock(c_in, c_out, emb_dim, dropout, attention=res in attention)

        def middle(c: int, attend: bool) -> ResAttnBlock:
            return ResAttnBlock(c, c, emb_dim, dropout, attention=attend)

        self.inp, self.down, self.downsample, self.mid, skips = build_encoder(
            self.data_shape[0], channels, channel_mult, _positive_int("n_res_blocks", n_res_blocks), resolutions, block, middle
        )
        self.head = nn.Sequential(
            group_norm(skips[-1]), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(skips[-1], self.n_classes)
        )

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        h, _ = run_encoder(self.inp, self.down, self.downsample, self.mid, x, self.time_mlp(self.time_embedding(t)))
        return self.head(h)


def as_classifier(net: nn.Module, sde=None) -> nn.Module:
    """The ``model.parameterization`` of a classifier run: the network itself (a classifier needs no
    wrapping into a score; the SDE only supplies its training inputs ``x_t``)."""
    if not isinstance(net, _Classifier):
        raise ValueError(f"a classifier run needs a classifier network (TimeClassifierMLP, UNetClassifier), got {type(net).__name__}")
    return net
