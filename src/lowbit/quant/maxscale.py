"""Weights divided by their largest value and rounded to a uniform grid (weights only).

This is how the APoT authors' code quantizes the first and the last layer to 8 bits (APoT
§4: "the first and the last layer ... 8-bit"): every weight is rounded to a multiple of
``max(W) / 127`` with a straight-through gradient, and the layer's input stays float.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.quant.hooks import GridView
from lowbit.quant.precision import float32_compute


@float32_compute
def max_scaled_quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``round(w / max(W) * n) / n * max(W)`` with ``n = 2**(bits - 1) - 1``, straight-through.

    ``max(W)`` is the largest weight, not the largest magnitude, and nothing is clipped, so a
    weight below ``-max(W)`` gets a code beyond ``-n``: the rule exactly as the APoT authors'
    checkpoints were trained with it. The scale is a constant to the gradient; a layer with no
    positive weight has no scale and passes through unchanged. A plain tensor formula, not a
    ``lowbit`` operator: it has no fused kernel and autograd of it is the authors' gradient,
    so ``torch.compile`` traces and fuses it.
    """
    scale = w.detach().max()
    steps = 2 ** (bits - 1) - 1
    rounded = w.detach().div(scale).mul(steps).round().div(steps).mul(scale)
    rounded = torch.where(scale > 0, rounded, w.detach())
    # Same arithmetic as the authors' `(q - w).detach() + w`, so outputs match theirs bitwise.
    return (rounded - w).detach() + w


class MaxScaleQuantizer(nn.Module):
    """``max_scaled_quantize`` at ``bits`` bits; no parameters."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return max_scaled_quantize(w, self.bits)

    @torch.no_grad()
    def grid_view(self, w: torch.Tensor) -> GridView | None:
        """``w / max(W)`` on the levels ``k / (2**(bits-1) - 1)`` from the lowest code the
        weight uses up to 1 (nothing is clipped) (``lowbit.quant.hooks.GridReporter``);
        ``None`` for a weight without a positive value (no scale)."""
        scale = w.max()
        if not scale > 0:
            return None
        steps = 2 ** (self.bits - 1) - 1
        units = w / scale
        lowest = int(torch.round(units.min() * steps))
        codes = torch.arange(lowest, steps + 1, device=w.device, dtype=w.dtype)
        return GridView(units, codes / steps, scale)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
