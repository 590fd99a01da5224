"""What every sampler returns: the samples and the number of score evaluations spent on them,
and the ``order`` (and ``method_orders``) attributes that some samplers carry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, Protocol, cast, overload

from torch import Tensor

P = ParamSpec("P")


@dataclass
class SamplerOutput:
    """Samples ``(B, *dims)`` and the number of score evaluations (NFE) spent on them."""

    samples: Tensor
    nfe: int


class OrderedSampler(Protocol[P]):
    """A sampler function with its convergence ``order`` as an attribute (``heun.order == 2``)."""

    order: float

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> SamplerOutput: ...


class MultiMethodSampler(OrderedSampler[P], Protocol[P]):
    """An :class:`OrderedSampler` whose ``method`` option picks a solver; ``order`` is the default
    method's order and ``method_orders`` maps every method to its order."""

    method_orders: dict[str, float]


@overload
def with_order(order: float) -> Callable[[Callable[P, SamplerOutput]], OrderedSampler[P]]: ...
@overload
def with_order(order: float, method_orders: dict[str, float]) -> Callable[[Callable[P, SamplerOutput]], MultiMethodSampler[P]]: ...
def with_order(order: float, method_orders: dict[str, float] | None = None) -> Callable[[Callable[P, SamplerOutput]], OrderedSampler[P]]:
    """Decorator that sets ``fn.order`` (and ``fn.method_orders`` if given) on a sampler function
    and returns the same function, typed as an :class:`OrderedSampler` (:class:`MultiMethodSampler`)."""

    def attach(fn: Callable[P, SamplerOutput]) -> OrderedSampler[P]:
        sampler = cast("MultiMethodSampler[P]", fn)  # plain functions take attributes; set them below
        sampler.order = order
        if method_orders is not None:
            sampler.method_orders = method_orders
        return sampler

    return attach
