"""Adapting a trained score model cheaply (``sde-train init_from=<run> finetune=lora|embedding|full``):
which parameters train, and the new classes a fine-tuning data set brings.

- :class:`LoRAFinetune`: low-rank adapters on the network's layers (Hu et al. 2022;
  :mod:`sde_diffusion.models.lora`), everything else frozen.
- :class:`EmbeddingFinetune`: a new concept without retraining (textual inversion in miniature, Gal
  et al. 2023): only the new classes' embedding rows train.
- :class:`FullFinetune`: every parameter trains (DreamBooth's setting, Ruiz et al. 2023, usually with
  prior preservation).

A class-conditional network meets labels it was not built for (a class it never saw) through
:func:`grow_class_embedding`: rows are added for the new classes, kept apart from the trained table
so that the trained rows cannot change; they train under every mode. ``prior_preservation`` is
DreamBooth's weight ``lambda`` (Ruiz et al. 2023, Eq. 2): the fine-tuning loss becomes
``E_new[L] + lambda E_prior[L]`` over the few new images and samples the original model generated
(the apps draw them; :func:`prior_weights` gives the rows' weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_range
from .models.lora import add_lora


class GrownEmbedding(nn.Module):
    """A class-embedding table ``(K + 1, d)`` (rows ``0 .. K - 1`` classes, row ``K`` the null label)
    grown by ``n_new`` rows for the classes ``K .. K + n_new - 1``; the null label moves to
    ``K + n_new``. The trained table is a frozen buffer; the new rows (initialised to the mean of the
    trained class rows) are the only parameter."""

    trained: Tensor  # a registered buffer

    def __init__(self, trained: nn.Embedding, n_new: int):
        super().__init__()
        self.register_buffer("trained", trained.weight.detach().clone())
        k = self.trained.shape[0] - 1
        self.new = nn.Parameter(self.trained[:k].mean(0, keepdim=True).repeat(n_new, 1))

    @property
    def weight(self) -> Tensor:
        """The whole table ``(K + n_new + 1, d)``: trained classes, new classes, null label."""
        return torch.cat([self.trained[:-1], self.new, self.trained[-1:]])

    def forward(self, y: Tensor) -> Tensor:
        return F.embedding(y, self.weight)


def grow_class_embedding(net: nn.Module, n_classes: int) -> int:
    """Grow ``net.class_embedding`` (a class-conditional :class:`~sde_diffusion.UNet`) to ``n_classes``
    classes with :class:`GrownEmbedding`, in place; returns the number of rows added (0 when it has
    enough). The null label becomes ``n_classes``."""
    old = getattr(net, "n_classes", None)
    table = getattr(net, "class_embedding", None)
    if old is None or not isinstance(table, (nn.Embedding, GrownEmbedding)):
        raise ValueError(
            f"fine-tuning on labelled data needs a class-conditional network (model.net.n_classes set); {type(net).__name__} has none"
        )
    if n_classes <= old:
        return 0
    if isinstance(table, GrownEmbedding):  # grown before (a fine-tuned run fine-tuned again): its rows are now the trained table
        table = nn.Embedding.from_pretrained(table.weight.detach().clone())
    setattr(net, "class_embedding", GrownEmbedding(table, n_classes - old))  # noqa: B010 (nn.Module typing)
    setattr(net, "n_classes", n_classes)  # noqa: B010
    return n_classes - old


def _raw_net(model: nn.Module) -> nn.Module:
    return getattr(model, "net", model)


class _Finetune:
    """Common part: the prior-preservation weight and the new classes."""

    def __init__(self, prior_preservation: float = 0.0, prior_samples: int = 200):
        self.prior_preservation = check_range(
            "finetune.prior_preservation", prior_preservation, low=0, hint="0: none; 1: DreamBooth's weight lambda"
        )
        self.prior_samples = int(check_range("finetune.prior_samples", prior_samples, low=1, integer=True))

    known_classes: int | None = None
    """The classes the model knew before :meth:`apply` (its ``n_classes``), set by it: the labels of
    prior-preservation samples."""

    def grow(self, model: nn.Module, n_classes: int | None) -> int:
        """Add embedding rows for labels up to ``n_classes - 1`` (the fine-tuning data's); an
        unconditional model ignores labels, as in training."""
        self.known_classes = getattr(_raw_net(model), "n_classes", None)
        return 0 if n_classes is None or self.known_classes is None else grow_class_embedding(_raw_net(model), n_classes)

    def apply(self, model: nn.Module, n_classes: int | None = None) -> None:
        """Make ``model`` ready to fine-tune, in place: grow its class embedding for ``n_classes``,
        then freeze what this mode keeps fixed."""
        raise NotImplementedError


class FullFinetune(_Finetune):
    """Every parameter trains (with new classes' rows when the data bring them)."""

    def apply(self, model: nn.Module, n_classes: int | None = None) -> None:
        self.grow(model, n_classes)

    def __repr__(self) -> str:
        return f"FullFinetune(prior_preservation={self.prior_preservation:g})"


class EmbeddingFinetune(_Finetune):
    """Only the new classes' embedding rows train (the data must bring at least one new class)."""

    def apply(self, model: nn.Module, n_classes: int | None = None) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        if getattr(_raw_net(model), "n_classes", None) is None:
            raise ValueError("finetune=embedding learns a class embedding: the model must be class-conditional (model.net.n_classes set)")
        if self.grow(model, n_classes) == 0:
            raise ValueError(
                "finetune=embedding learns the embedding of a class the model does not know, but the data's labels are all "
                "known to it: fine-tune on a new class (data.classes=[9] for a model trained on 0..8), or use finetune=lora|full"
            )

    def __repr__(self) -> str:
        return f"EmbeddingFinetune(prior_preservation={self.prior_preservation:g})"


class LoRAFinetune(_Finetune):
    """Low-rank adapters of ``rank`` and ``alpha`` on the ``targets`` layers; the new classes' rows train too.

    The time embedding's MLP and the class embedding are left without adapters (``skip``): the
    adapters change how the network uses its conditioning, the new rows what a new class means."""

    def __init__(
        self, rank: int = 4, alpha: float | None = None, targets: str = "all", prior_preservation: float = 0.0, prior_samples: int = 200
    ):
        super().__init__(prior_preservation, prior_samples)
        self.rank, self.alpha, self.targets = rank, alpha, targets

    def apply(self, model: nn.Module, n_classes: int | None = None) -> None:
        net = _raw_net(model)
        add_lora(net, self.rank, self.alpha, self.targets, skip=("time_mlp", "class_embedding", "time_embedding"))
        self.grow(model, n_classes)

    def __repr__(self) -> str:
        return (
            f"LoRAFinetune(rank={self.rank}, alpha={self.alpha}, targets={self.targets!r}, prior_preservation={self.prior_preservation:g})"
        )


def prior_weights(n_new: int, n_prior: int, weight: float) -> Tensor:
    """Row weights ``(n_new + n_prior,)`` for the new images followed by the prior samples, so that a
    uniform draw of rows gives ``E_new[L] + weight E_prior[L]`` up to a constant factor: 1 for a new
    row, ``weight n_new / n_prior`` for a prior row."""
    return torch.cat([torch.ones(n_new), torch.full((n_prior,), weight * n_new / n_prior)])


def trainable_parameters(model: nn.Module) -> int:
    """The number of parameters that train (``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
