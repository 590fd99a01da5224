"""A U-Net noise/score network for images, in the DDPM++ / NCSN++ family, sized by its arguments."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_range
from .._shapes import batch_time
from ..conditioning import Conditioning
from .blocks import ResAttnBlock, Upsample, conv3x3, group_norm, zero_init
from .embeddings import GaussianFourierEmbedding, SinusoidalEmbedding


def _positive_int(name: str, value) -> int:
    return check_range(f"UNet {name}", value, low=1, integer=True)


class UNet(nn.Module):
    """Raw network ``net(x, t)`` or ``net(x, t, y)`` for images ``x`` of shape ``(B, C, H, W)``;
    the output has the shape of ``x``.

    The architecture of DDPM (Ho et al. 2020, App. B) with the DDPM++ choices of Song et al. 2021
    (App. H): residual blocks with GroupNorm and SiLU, the embedding of ``t`` (and of the class
    ``y``) added to every residual block, single-head self-attention after the residual blocks of the
    levels whose resolution is listed (and always in the middle), residual sums scaled by
    ``1 / sqrt(2)``, and every residual branch and the output convolution initialised to zero, so
    the initial output is exactly 0 (a sensible start for every parameterization).

    Level ``l`` (``l = 0 .. L - 1``, ``L = len(channel_mult)``) works at resolution
    ``H / 2**l x W / 2**l`` with ``channels * channel_mult[l]`` channels; ``H`` and ``W`` must be
    divisible by ``2**(L - 1)`` (checked here, with the fix named). The encoder holds
    ``n_res_blocks`` residual blocks per level, the decoder ``n_res_blocks + 1``, fed by skip
    connections.

    Args:
        data_shape: ``(C, H, W)`` of one image.
        channels: base channel count (128 in DDPM++ on CIFAR-10).
        channel_mult: channel multiplier of each level, e.g. ``[1, 2, 2]``.
        n_res_blocks: residual blocks per encoder level.
        attention_resolutions: spatial sizes (feature-map heights ``H / 2**l``) at which to add
            self-attention, e.g. ``[16]`` for 32x32 images; each must be the resolution of a level.
        dropout: dropout probability inside residual blocks, in ``[0, 1)``.
        n_classes: number of classes for class-conditional models; labels are ``0 .. n_classes - 1``
            and ``n_classes`` itself is the null label (no class, for classifier-free guidance).
            ``None`` builds an unconditional network.
        time_embedding: module mapping ``t`` ``(B,)`` to ``(B, dim)`` features with a ``dim``
            attribute (default :class:`GaussianFourierEmbedding`); an MLP maps it to
            ``4 * channels`` features.
        learn_variance: double the output channels (``2C``): the prediction, then the variance
            interpolation of :class:`~sde_diffusion.models.LearnedVarianceParameterization`
            (Nichol & Dhariwal 2021, Sec. 3.1).
        cond_channels: channels of a conditioning image (SR3, Saharia et al. 2021; cascades, Ho et
            al. 2022), 0 for none. The image, of any size, is resized to ``H x W`` (nearest
            neighbour: block copies, which lose nothing of a low-resolution input) and concatenated
            to ``x`` as input channels; its noise-augmentation level ``(B,)`` is embedded (sinusoidal
            features of ``1000 level``, an MLP) and added to the time embedding. ``forward`` then
            needs ``cond``, a :class:`~sde_diffusion.conditioning.Conditioning`.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        n_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (),
        dropout: float = 0.1,
        n_classes: int | None = None,
        time_embedding: nn.Module | None = None,
        learn_variance: bool = False,
        cond_channels: int = 0,
    ):
        super().__init__()
        data_shape = tuple(int(d) for d in data_shape)
        if len(data_shape) != 3 or min(data_shape) < 1:
            raise ValueError(f"UNet needs data_shape (C, H, W) of positive sizes for images, got {data_shape}; for vector data use TimeMLP")
        _positive_int("channels", channels)
        _positive_int("n_res_blocks", n_res_blocks)
        channel_mult = [_positive_int("channel_mult entries", m) for m in channel_mult]
        if not channel_mult:
            raise ValueError("UNet channel_mult must list at least one level, e.g. [1, 2, 2]")
        dropout = check_range("UNet dropout", dropout, low=0.0, high=1.0, high_open=True)
        if n_classes is not None:
            _positive_int("n_classes", n_classes)
        cond_channels = check_range("UNet cond_channels", cond_channels, low=0, integer=True, hint="0: no conditioning image")
        self.cond_channels = cond_channels
        self.data_shape = data_shape
        self.n_classes = n_classes
        self.learn_variance = bool(learn_variance)
        n_levels = len(channel_mult)
        resolutions = _level_resolutions(data_shape, n_levels)
        attention = _check_attention(attention_resolutions, resolutions)

        self.time_embedding = time_embedding if time_embedding is not None else GaussianFourierEmbedding()
        if not isinstance(self.time_embedding, nn.Module) or not isinstance(time_dim := getattr(self.time_embedding, "dim", None), int):
            raise ValueError(
                f"UNet time_embedding must be a module mapping t (B,) to (B, dim) with an integer dim "
                f"attribute (e.g. GaussianFourierEmbedding), got {type(self.time_embedding).__name__}"
            )
        emb_dim = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # row n_classes is the null label used when no class is given
        self.class_embedding = nn.Embedding(n_classes + 1, emb_dim) if n_classes is not None else None

        def block(c_in: int, c_out: int, res: int) -> ResAttnBlock:
            return ResAttnBlock(c_in, c_out, emb_dim, dropout, attention=res in attention)

        def middle(c: int, attend: bool) -> ResAttnBlock:
            return ResAttnBlock(c, c, emb_dim, dropout, attention=attend)

        self.inp, self.down, self.downsample, self.mid, skips = build_encoder(
            data_shape[0] + cond_channels, channels, channel_mult, n_res_blocks, resolutions, block, middle
        )
        ch = skips[-1]
        # decoder: per level n_res_blocks + 1 blocks, each eating one skip, then upsampling
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(n_levels)):
            blocks = nn.ModuleList()
            for _ in range(n_res_blocks + 1):
                blocks.append(block(ch + skips.pop(), channels * channel_mult[level], resolutions[level]))
                ch = channels * channel_mult[level]
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(Upsample(ch))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_init(conv3x3(ch, data_shape[0] * (1 + self.learn_variance))))
        # built last, so that an unconditioned network's initial weights do not depend on this option
        self.level_embedding = (
            nn.Sequential(SinusoidalEmbedding(32), nn.Linear(32, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if cond_channels
            else None
        )

    def embed(self, t: Tensor, y: Tensor | None) -> Tensor:
        """The ``(B, 4 channels)`` conditioning vector: ``MLP(time_embedding(t)) + E[y]``."""
        emb = self.time_mlp(self.time_embedding(t))
        if self.class_embedding is None:
            if y is not None:
                raise ValueError("this UNet was built with n_classes=None (unconditional); build it with n_classes to pass labels y")
            return emb
        n_classes = self.n_classes
        assert n_classes is not None  # __init__ builds class_embedding exactly when n_classes is given
        if y is None:
            y = torch.full((t.shape[0],), n_classes, dtype=torch.long, device=t.device)
        elif y.shape != t.shape or y.dtype != torch.long:
            raise ValueError(f"labels y must be int64 of shape (B,) = {tuple(t.shape)}, got {y.dtype} of shape {tuple(y.shape)}")
        elif not torch.compiler.is_compiling() and bool(((y < 0) | (y > n_classes)).any()):  # a compiled graph cannot branch on data
            raise ValueError(
                f"labels y must lie in 0..{self.n_classes} ({self.n_classes} is the null label), got values from {int(y.min())} to {int(y.max())}"
            )
        return emb + self.class_embedding(y)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)`` (or a scalar), optional class labels ``y`` ``(B,)``
        int64 (``None``: the null label for a conditional network), and for a network built with
        ``cond_channels`` the conditioning image and level ``cond``. Returns ``(B, C, H, W)``, or
        ``(B, 2C, H, W)`` with ``learn_variance`` (the prediction, then the variance interpolation)."""
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"UNet was built for images of shape {self.data_shape}, got input of shape {tuple(x.shape)}")
        emb = self.embed(batch_time(t, x), y)
        if self.level_embedding is not None:
            x, level_emb = self._condition(x, cond)
            emb = emb + level_emb
        elif cond is not None:
            raise ValueError("this UNet was built without cond_channels (no conditioning image); build it with cond_channels to pass cond")
        h, skips = run_encoder(self.inp, self.down, self.downsample, self.mid, x, emb)
        for level, blocks in enumerate(self.up):
            for blk in cast(nn.ModuleList, blocks):
                h = blk(torch.cat([h, skips.pop()], dim=1), emb)
            if level < len(self.upsample):
                h = self.upsample[level](h)
        return self.out(h)

    def _condition(self, x: Tensor, cond: Conditioning | None) -> tuple[Tensor, Tensor]:
        """``x`` with the conditioning image (resized to ``H x W``) as extra channels, and the level's
        embedding ``(B, 4 channels)``."""
        if not isinstance(cond, Conditioning):
            raise ValueError(
                f"this UNet is conditioned on an image ({self.cond_channels} channels): pass cond=Conditioning(image, level) "
                f"(sde_diffusion.conditioning; a ConditionedScore binds it for sampling), got {type(cond).__name__}"
            )
        image, level = cond
        if image.dim() != 4 or image.shape[0] != x.shape[0] or image.shape[1] != self.cond_channels:
            raise ValueError(
                f"the conditioning image must be ({x.shape[0]}, {self.cond_channels}, h, w) for this batch, got {tuple(image.shape)}"
            )
        if level.shape != (x.shape[0],):
            raise ValueError(f"the conditioning level must have shape ({x.shape[0]},), got {tuple(level.shape)}")
        if image.shape[-2:] != x.shape[-2:]:
            image = F.interpolate(image, size=x.shape[-2:], mode="nearest")
        assert self.level_embedding is not None  # built exactly when cond_channels > 0
        return torch.cat([x, image.to(x.dtype)], dim=1), self.level_embedding(level.to(x.dtype))


def build_encoder(
    in_channels: int,
    channels: int,
    channel_mult: Sequence[int],
    n_res_blocks: int,
    resolutions: Sequence[int],
    block: Callable[[int, int, int], nn.Module],
    middle: Callable[[int, bool], nn.Module],
) -> tuple[nn.Conv2d, nn.ModuleList, nn.ModuleList, nn.ModuleList, list[int]]:
    """The U-Net's encoder and middle, shared by :class:`UNet` and the noisy-data classifier.

    Per level ``n_res_blocks`` blocks ``block(c_in, c_out, resolution)``, then a stride-2 convolution
    (except after the last level); the middle is ``middle(c, attention=True)`` then
    ``middle(c, False)`` (DDPM: a residual block with attention and one without), at the lowest
    resolution. Modules are created in the order of the forward pass (so are their initial weights). Returns ``(inp, down, downsample, mid, skips)``; ``skips``
    lists the channels of every kept feature map (the decoder's skip connections), the last being
    the middle's channel count.
    """
    inp = conv3x3(in_channels, channels)
    ch, skips = channels, [channels]
    down, downsample = nn.ModuleList(), nn.ModuleList()
    for level, mult in enumerate(channel_mult):
        blocks = nn.ModuleList()
        for _ in range(n_res_blocks):
            blocks.append(block(ch, channels * mult, resolutions[level]))
            ch = channels * mult
            skips.append(ch)
        down.append(blocks)
        if level < len(channel_mult) - 1:
            downsample.append(conv3x3(ch, ch, stride=2))
            skips.append(ch)
    mid = nn.ModuleList([middle(ch, True), middle(ch, False)])
    return inp, down, downsample, mid, skips


def run_encoder(
    inp: nn.Module, down: nn.ModuleList, downsample: nn.ModuleList, mid: nn.ModuleList, x: Tensor, emb: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """Run the encoder and middle of :func:`build_encoder` on ``x`` ``(B, C, H, W)`` with the
    embedding ``emb``; returns the middle's output and the skips."""
    h = inp(x)
    skips = [h]
    for level, blocks in enumerate(down):
        for blk in cast(nn.ModuleList, blocks):
            h = blk(h, emb)
            skips.append(h)
        if level < len(downsample):
            h = downsample[level](h)
            skips.append(h)
    for blk in mid:
        h = blk(h, emb)
    return h, skips


def _level_resolutions(data_shape: tuple[int, int, int], n_levels: int) -> list[int]:
    """Feature-map heights ``H / 2**l`` of the levels; rejects sizes that do not halve evenly."""
    _, height, width = data_shape
    factor = 2 ** (n_levels - 1)
    if height % factor or width % factor:
        fits = 1
        while height % 2**fits == 0 and width % 2**fits == 0:
            fits += 1
        raise ValueError(
            f"UNet with {n_levels} levels (len(channel_mult)) halves {height}x{width} images "
            f"{n_levels - 1} times, so H and W must be divisible by {factor}; use at most {fits} "
            f"levels for {height}x{width} images, or pad or resize them (e.g. to 32x32)"
        )
    return [height // 2**level for level in range(n_levels)]


def _check_attention(attention_resolutions: Sequence[int], resolutions: list[int]) -> set[int]:
    wanted = {int(r) for r in attention_resolutions}
    missing = sorted(wanted - set(resolutions))
    if missing:
        raise ValueError(
            f"UNet attention_resolutions {missing} are not resolutions of this network: its levels "
            f"work at {resolutions} (feature-map height); choose among those"
        )
    return wanted
