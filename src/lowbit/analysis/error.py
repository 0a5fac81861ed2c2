"""Quantization error: the clipping / projection split of APoT Eq. 14, the clipping ratio as a
function of alpha (APoT Fig. 4a) and the SQNR of UniQ Table 1, per layer; and the threshold
that minimizes the quantization error (QEM, APoT App. C.1), against the one RCF learned
(APoT Fig. 6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.codes import broadcast_scale
from lowbit.export.grids import grid_levels, quantizer_grid, quantizer_input
from lowbit.export.writer import quantized_layers
from lowbit.quant.apot import RCFQuantizer, rcf_quantize
from lowbit.quant.init import sqnr_db
from lowbit.quant.project import midpoints

# QEM's search: QEM_GRID thresholds evenly up to max|x|, then QEM_ROUNDS - 1 times QEM_GRID
# between the best one's neighbours (resolution max|x| / QEM_GRID**QEM_ROUNDS, about 4e-6).
QEM_GRID = 64
QEM_ROUNDS = 3


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


@torch.no_grad()
def threshold_error(
    x: torch.Tensor, alpha: float, levels: torch.Tensor, signed: bool = True
) -> tuple[float, float]:
    """APoT Eq. 14's ``(clipping, projection)`` errors of RCF (Eq. 7) at threshold ``alpha``
    on ``levels`` (normalized to a maximum of 1): values beyond ``alpha`` (beyond ``-alpha``
    too when ``signed``) are clipped, the others projected."""
    x = x.detach().float()
    threshold = torch.tensor(float(alpha))
    x_hat = rcf_quantize(x, threshold, levels.float(), signed)
    lo = -threshold if signed else torch.tensor(-math.inf)
    return clip_projection_error(x, x_hat, lo, threshold)


def eq14_totals(
    x: torch.Tensor, alphas: torch.Tensor, levels: torch.Tensor, signed: bool = True
) -> torch.Tensor:
    """Eq. 14's total ``Delta_clip + Delta_proj`` of RCF on ``levels`` at each threshold in
    ``alphas`` (float64, one per alpha): a value beyond alpha costs ``(|x| - alpha)^2``, one
    inside its distance to the nearest level times alpha, squared.

    From one sort of ``x``: each level's cell (and the clipped tail) is a run of the sorted
    values, whose squared distances to a point sum from running sums of the values and their
    squares, so a threshold costs a search per level, not a pass over ``x``. Signed data meet
    a symmetric level set by magnitude; a value on a boundary goes to the larger level, as in
    ``lowbit.quant.project``."""
    levels = levels.detach().double().cpu()
    values = x.detach().double().reshape(-1).cpu()
    if signed:
        values, levels = values.abs(), levels[levels >= 0]
        if levels[0] > 0:  # no zero level: the smallest magnitude also takes what is below it
            levels = torch.cat([levels[:1], levels])
    values = values.sort().values
    count = values.numel()
    sums = torch.cat([values.new_zeros(1), values.cumsum(0)])
    squares = torch.cat([values.new_zeros(1), values.square().cumsum(0)])
    alphas = alphas.double().reshape(-1, 1).cpu()
    inside = torch.searchsorted(values, alphas, right=True)
    cuts = torch.searchsorted(values, (alphas * midpoints(levels)).contiguous())
    edges = torch.cat([torch.zeros_like(inside), torch.minimum(cuts, inside), inside], dim=1)
    lo, hi = edges[:, :-1], edges[:, 1:]
    points = alphas * levels  # each cell's level, scaled
    projection = (squares[hi] - squares[lo]) - 2 * points * (sums[hi] - sums[lo]) \
        + points.square() * (hi - lo)
    tail = count - inside
    clipping = (squares[count] - squares[inside]) - 2 * alphas * (sums[count] - sums[inside]) \
        + alphas.square() * tail
    return (projection.sum(dim=1, keepdim=True) + clipping).reshape(-1) / count


@torch.no_grad()
def qem_alpha(x: torch.Tensor, levels: torch.Tensor, signed: bool = True) -> float:
    """Quantization error minimization (APoT App. C.1, "alpha = argmin (Delta_clip +
    Delta_proj)"): the threshold in ``(0, max|x|]`` with the least Eq. 14 total error of RCF on
    ``levels``, by a grid search refined around its best point (``QEM_GRID``,
    ``QEM_ROUNDS``)."""
    top = float(x.detach().abs().max() if signed else x.detach().max())
    if not top > 0:
        raise LowbitError("QEM needs a tensor with a positive value to clip")
    lo, hi, best = 0.0, top, top
    for _ in range(QEM_ROUNDS):
        step = (hi - lo) / QEM_GRID
        candidates = lo + step * torch.arange(1, QEM_GRID + 1, dtype=torch.float64)
        best = float(candidates[int(eq14_totals(x, candidates, levels, signed).argmin())])
        lo, hi = max(best - step, 0.0), min(best + step, top)
    return best


@dataclass(frozen=True)
class ThresholdComparison:
    """One layer's weights under its own threshold (learned by RCF, or max|W|) and under
    QEM's, with Eq. 14's split at each, in the units of the normalized weights (Eq. 9) when
    the quantizer normalizes (APoT Fig. 6)."""

    name: str
    bits: int
    alpha: float
    clip_mse: float
    projection_mse: float
    qem_alpha: float
    qem_clip_mse: float
    qem_projection_mse: float


@torch.no_grad()
def threshold_comparisons(model: nn.Module) -> list[ThresholdComparison]:
    """``ThresholdComparison`` of every layer whose weights an RCF quantizer quantizes (apot,
    pot, uniform, lloyd; the 8-bit first and last layers of the authors' rule have no alpha
    and are left out)."""
    rows = []
    for name, layer in quantized_layers(model):
        quantizer = layer.weight_quantizer
        if not isinstance(quantizer, RCFQuantizer):
            continue
        x, _ = quantizer.normalized(layer.weight.detach().float())
        alpha = float(quantizer.threshold(x))
        best = qem_alpha(x, quantizer.levels, quantizer.signed)
        rows.append(ThresholdComparison(
            name, int(quantizer.bits), alpha,
            *threshold_error(x, alpha, quantizer.levels, quantizer.signed),
            best, *threshold_error(x, best, quantizer.levels, quantizer.signed),
        ))
    if not rows:
        raise LowbitError(
            "no layer's weights have a clipping threshold alpha to compare with QEM; "
            "quantize with apot, pot, uniform or lloyd"
        )
    return rows
