"""How the network runs: floating-point precision (automatic mixed precision) and compilation.

``precision="bf16"`` or ``"fp16"`` runs the network's forward pass under ``torch.autocast``:
matrix products and convolutions in the half type, reductions and normalisations in float32, and
the output handed back in the input's dtype, so the loss, the optimiser, the EMA and the samplers'
arithmetic stay in float32 (Micikevicius et al. 2018, "Mixed Precision Training"). fp16's narrow
range needs a gradient scaler in training (:class:`~sde_diffusion.training.Trainer` keeps one);
bf16 has float32's range and needs none. ``compile=True`` hands the network to ``torch.compile``
(TorchInductor: fused kernels, C++ on the CPU, Triton on CUDA).

The probability-flow likelihood needs the network in float32: its adaptive solver controls the
error to ``rtol = 1e-5``, and bf16's 8-bit mantissa (relative rounding ``4e-3``) would make the
field it integrates noisy at that level; ``sde-eval`` refuses reduced precision for the ODE bounds
(``sde-train``'s held-out NLL always uses the plain EMA network). It refuses compilation there too:
the divergence differentiates the network once per probe through ``torch.vmap``
(``is_grads_batched``), which a compiled graph does not support.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Any

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
HALF_TYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: Any, device: str | torch.device) -> str:
    """``precision`` if ``device`` can run it; otherwise a ValueError in one line that says what to use."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision=bf16: {torch.cuda.get_device_name(device)} has no bfloat16 arithmetic; use precision=fp16")
    return precision


def check_compile(compile: Any, device: str | torch.device) -> bool:
    """``compile`` (a bool) if ``torch.compile`` can build for ``device`` here; otherwise a ValueError
    in one line: Inductor needs a C++ compiler for the CPU and Triton for CUDA."""
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be true or false, got {compile!r}")
    if not compile:
        return False
    if not torch._dynamo.is_dynamo_supported():
        raise ValueError("compile=true: torch.compile does not support this Python or platform; use compile=false")
    device = torch.device(device)
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        raise ValueError("compile=true on the CPU needs a C++ compiler (g++ or clang++) on the PATH; install one or use compile=false")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ValueError("compile=true on CUDA needs the triton package (pip install triton); or use compile=false")
    return True


class MixedPrecision(nn.Module):
    """``net`` run under ``torch.autocast(device_type, half type of precision)``, its output cast back
    to the dtype of the first argument (the state ``x``). Attributes the wrapper lacks
    (``n_classes``, ``learns_variance``, ...) are the wrapped network's; its parameters are the
    network's own (float32), so optimiser and EMA see full-precision weights."""

    def __init__(self, net: nn.Module, precision: str, device_type: str):
        super().__init__()
        if precision not in HALF_TYPES:
            raise ValueError(f"MixedPrecision runs bf16 or fp16, got {precision!r}")
        self.net = net
        self.precision = precision
        self.device_type = device_type

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=HALF_TYPES[self.precision]):
            out = self.net(x, *args, **kwargs)
        return out.to(x.dtype)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.net, name)


def accelerate(net: nn.Module, *, precision: str = "fp32", compile: bool = False, device: str | torch.device = "cpu") -> nn.Module:
    """``net`` as it should run: under mixed precision (``bf16``, ``fp16``) and/or compiled, after
    :func:`check_precision` and :func:`check_compile`; ``net`` itself when neither applies. The
    result shares ``net``'s parameters."""
    device = torch.device(device)
    precision = check_precision(precision, device)
    out: nn.Module = net if precision == "fp32" else MixedPrecision(net, precision, device.type)
    if check_compile(compile, device):
        out = torch.compile(out)  # type: ignore[assignment]  # an OptimizedModule, called like net
    return out
