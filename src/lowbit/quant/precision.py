"""Quantizers compute in float32 at least.

A bf16 / fp16 input (mixed-precision training, a half-precision model) has too few
mantissa bits to place values in their cells: at 4 bits APoT's grid has 96 cells, and a
bf16 position ``x * 96 / alpha`` can be off by half a cell. Quantizer functions decorated
with ``float32_compute`` quantize such inputs in float32 and return the input's dtype;
autograd carries the gradient through both casts.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)

F = TypeVar("F", bound=Callable[..., torch.Tensor])


def float32_compute(fn: F) -> F:
    """``fn(x, ...)`` computed on ``x.float()`` when ``x`` is bf16 / fp16, cast back."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if x.dtype in LOW_PRECISION:
            return fn(x.float(), *args, **kwargs).to(x.dtype)
        return fn(x, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
