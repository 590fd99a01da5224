"""Low-rank adapters (LoRA, Hu et al. 2022, Eq. 3) for the linear and convolution layers of any network.

A frozen layer ``W`` becomes ``W + (alpha / r) B A``: ``A`` ``(r, fan_in)`` drawn like a fresh layer's
weight (Kaiming-uniform), ``B`` ``(fan_out, r)`` zero, so a fresh adapter adds exactly nothing; only
``A`` and ``B`` train. For a convolution ``A`` is itself a convolution with the layer's kernel, stride
and padding into ``r`` channels and ``B`` a 1x1 convolution, so ``B A`` is the weight update
``(out, in, k, k)`` of rank ``r``.

Written here rather than taken from peft: peft's LoRA pulls in the transformers stack, and its
wrappers rename the state dict's keys, which this toolkit's checkpoints and ``load_run`` rely on;
the module below is the paper's equation in a few lines, with merge and a separate adapter file.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_range

TARGETS = {
    "linear": (nn.Linear,),
    "conv": (nn.Conv2d,),
    "all": (nn.Linear, nn.Conv2d),
}
"""Which layers :func:`add_lora` adapts: ``linear``, ``conv`` (every 2-D convolution, the attention's
1x1 projections included) or ``all``."""


class LoRALayer(nn.Module):
    """``base(x) + (alpha / rank) B(A(x))`` around a frozen ``nn.Linear`` or ``nn.Conv2d`` ``base``."""

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        for p in base.parameters():
            p.requires_grad_(False)
        device, dtype = base.weight.device, base.weight.dtype
        a_shape: tuple[int, ...]
        b_shape: tuple[int, ...]
        if isinstance(base, nn.Linear):
            a_shape, b_shape = (rank, base.in_features), (base.out_features, rank)
        else:
            if base.groups != 1:
                raise ValueError("LoRA on grouped convolutions is not supported; choose targets without them")
            a_shape, b_shape = (rank, base.in_channels, *base.kernel_size), (base.out_channels, rank, 1, 1)
        self.lora_A = nn.Parameter(torch.empty(a_shape, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(b_shape, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear / nn.Conv2d initialise their weight

    def delta(self, x: Tensor) -> Tensor:
        """``(alpha / r) B(A(x))``, the adapter's contribution."""
        base = self.base
        if isinstance(base, nn.Linear):
            return self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)
        h = F.conv2d(x, self.lora_A, None, base.stride, base.padding, base.dilation)
        return self.scaling * F.conv2d(h, self.lora_B)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.delta(x)

    def merged_weight(self) -> Tensor:
        """``W + (alpha / r) B A`` in the base layer's weight shape."""
        w = self.base.weight
        update = self.lora_B.flatten(1) @ self.lora_A.flatten(1)
        return w + self.scaling * update.reshape(w.shape)

    def merged(self) -> nn.Linear | nn.Conv2d:
        """A plain layer with the merged weight (and the base's bias), detached from the adapter."""
        layer = copy.deepcopy(self.base)
        layer.weight = nn.Parameter(self.merged_weight().detach().clone(), requires_grad=False)
        return layer


def add_lora(model: nn.Module, rank: int = 4, alpha: float | None = None, targets: str = "all", skip: Iterable[str] = ()) -> list[str]:
    """Freeze every parameter of ``model`` and wrap its layers of kind ``targets`` (:data:`TARGETS`)
    in :class:`LoRALayer` of ``rank`` and ``alpha`` (default ``rank``: scaling 1), in place; layers
    whose qualified name contains any of ``skip`` are left alone. Returns the wrapped layers' names."""
    rank = check_range("LoRA rank", rank, low=1, integer=True)
    if targets not in TARGETS:
        raise ValueError(f"LoRA targets must be one of {', '.join(TARGETS)}, got {targets!r}")
    alpha = float(rank if alpha is None else alpha)
    for p in model.parameters():
        p.requires_grad_(False)
    kinds, skip = TARGETS[targets], tuple(skip)
    chosen = [name for name, m in model.named_modules() if isinstance(m, kinds) and not any(s in name for s in skip) and name]
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALayer(getattr(parent, child), rank, alpha))
    if not chosen:
        raise ValueError(f"the model has no {targets} layers to adapt (skip={list(skip)})")
    return chosen


def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' parameters only (``<layer>.lora_A``, ``<layer>.lora_B``): the small file of a fine-tuning run."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALayer` of ``model`` by its merged plain layer, in place (for sampling
    without the adapters' extra cost); returns ``model``."""
    for name, layer in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.merged())
    return model
