"""Quantization error: the clipping / projection split of APoT Eq. 14, the clipping ratio as a
function of alpha (APoT Fig. 4a) and the SQNR of UniQ Table 1, per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.codes import broadcast_scale
from lowbit.export.grids import grid_levels, quantizer_grid, quantizer_input
from lowbit.export.writer import quantized_layers
from lowbit.quant.init import sqnr_db


def clip_projection_error(
    x: torch.Tensor, x_hat: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[float, float]:
    """APoT Eq. 14: ``(clipping, projection)`` mean squared errors, summing to the total MSE.

    Elements of ``x`` outside ``[lo, hi]`` contribute their distance to the clipping range
    (``(|W| - alpha)^2``), the others their distance to the quantized ``x_hat``; both are
    averaged over all ``I`` elements. ``lo`` / ``hi`` broadcast against ``x`` (per channel).
    """
    x, x_hat = x.detach().double(), x_hat.detach().double()
    lo, hi = lo.double(), hi.double()
    outside = (x < lo) | (x > hi)
    clipped = torch.minimum(torch.maximum(x, lo), hi)
    clipping = torch.where(outside, x - clipped, 0.0).square().sum() / x.numel()
    projection = torch.where(outside, 0.0, x - x_hat).square().sum() / x.numel()
    return float(clipping), float(projection)


def clipping_ratio(x: torch.Tensor, alphas: torch.Tensor, signed: bool = True) -> torch.Tensor:
    """APoT Fig. 4a: the fraction of elements clipped at each threshold in ``alphas``,
    ``|x| > alpha`` (signed data) or ``x > alpha`` (unsigned)."""
    values = (x.detach().abs() if signed else x.detach()).reshape(-1).double().sort().values
    kept = torch.searchsorted(values, alphas.double(), right=True)
    return 1.0 - kept.double() / values.numel()


@dataclass(frozen=True)
class LayerError:
    """Weight-quantization error of one layer, in the quantizer's own domain (the normalized
    weights of APoT Eq. 9 for RCF quantizers with weight normalization)."""

    name: str
    bits: int
    clip_mse: float
    projection_mse: float
    clipped_fraction: float
    sqnr_db: float

    @property
    def mse(self) -> float:
        return self.clip_mse + self.projection_mse


@torch.no_grad()
def weight_errors(model: nn.Module) -> list[LayerError]:
    """Eq. 14 split, clipped fraction and SQNR of every quantized layer's weights."""
    errors = []
    for name, layer in quantized_layers(model):
        quantizer = layer.weight_quantizer
        if quantizer is None:
            continue
        weight = layer.weight.detach().float()
        x = quantizer_input(quantizer, weight)
        x_hat = quantizer(weight)
        lo, hi = clipping_range(quantizer, weight)
        outside = ((x < lo) | (x > hi)).double().mean()
        clip_mse, projection_mse = clip_projection_error(x, x_hat, lo, hi)
        errors.append(
            LayerError(name, int(quantizer.bits), clip_mse, projection_mse, float(outside),
                       sqnr_db(x, x_hat))
        )
    if not errors:
        raise LowbitError("the model has no quantized weights to analyse; quantize it first")
    return errors


def clipping_range(
    quantizer: nn.Module, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)``: the smallest and largest output of a quantizer (its end levels times its
    scale), shaped to broadcast against ``weight`` when the scale is per channel."""
    grid = quantizer_grid(quantizer, weight)
    levels = grid_levels(grid.spec)
    scale = grid.scale.double()
    if weight is not None:
        scale = broadcast_scale(scale, weight.dim())
    return levels[0] * scale, levels[-1] * scale
