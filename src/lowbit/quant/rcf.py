"""Reparameterized clipping function (APoT Eq. 7-8) and weight normalization (Eq. 9)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.quant.levels import levels as make_levels
from lowbit.quant.project import (
    grid_cells,
    grid_table,
    midpoints,
    project_by_search,
    project_on_grid,
)


class _RCF(torch.autograd.Function):
    """``alpha * Pi(clip(x / alpha))`` with the gradients of APoT Eq. 8.

    Forward projects ``x`` straight onto ``alpha * levels`` (the grid or the boundaries are
    scaled instead of the tensor). Backward: straight-through for ``x`` inside the clipping
    range, zero outside; for alpha, ``Pi(x/alpha) - x/alpha`` inside and ``sign(x)`` outside
    (Eq. 8). Outside the range ``Pi(x/alpha) = sign(x)``, so the alpha gradient is
    ``(sum(g * out) - sum(g_x * x)) / alpha``: two dot products, no extra tensor.
    """

    @staticmethod
    def forward(ctx, x, alpha, levels, boundaries, table, signed):
        if table is not None:
            out = project_on_grid(x, table * alpha, -1.0 if signed else 0.0, 1.0, alpha)
        else:
            out = project_by_search(x, levels * alpha, boundaries * alpha)
        ctx.signed = signed
        ctx.save_for_backward(x, out, alpha)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, out, alpha = ctx.saved_tensors
        outside = (x.abs() > alpha) if ctx.signed else (x > alpha)
        grad_x = torch.where(outside, 0.0, grad_out)
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            flat_g, flat_gx = grad_out.reshape(-1), grad_x.reshape(-1)
            grad_alpha = (flat_g.dot(out.reshape(-1)) - flat_gx.dot(x.reshape(-1))) / alpha
            grad_alpha = grad_alpha.reshape(alpha.shape)
        return grad_x, grad_alpha, None, None, None, None


def rcf_quantize(
    x: torch.Tensor,
    alpha: torch.Tensor,
    levels: torch.Tensor,
    signed: bool = True,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """APoT Eq. 7: ``alpha * Pi_Q(1,b)(clip(x / alpha, 1))`` with the Eq. 8 gradient.

    ``levels`` is a sorted set normalized to a maximum of 1 (``lowbit.levels``), ``alpha`` a
    scalar tensor, ``table`` the optional ``grid_table`` of the levels (faster projection).
    Signed data are clipped to [-alpha, alpha]; unsigned data (activations) only from above:
    values below zero project to the zero level.
    """
    dtype = x.dtype
    table = None if table is None else table.to(dtype)
    levels = levels.to(dtype)
    return _RCF.apply(x, alpha.to(dtype), levels, midpoints(levels), table, signed)


def normalize_weight(w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """APoT Eq. 9: ``(W - mean) / (std + eps)`` over the whole layer, population std.

    Differentiable: gradients flow through the mean and the std (Algorithm 1, step 8).
    """
    mean = w.mean()
    std = w.std(correction=0)
    return (w - mean) / (std + eps)


class RCFQuantizer(nn.Module):
    """A learnable clipping threshold alpha on a fixed level set (APoT §2.3-2.4).

    With ``level_set="apot"`` this is APoT; ``"pot"`` and ``"uniform"`` give the ablation rows
    of APoT Table 3 with the same RCF and weight normalization. The level set is a
    non-persistent buffer, so a state dict holds only alpha and loads across bit-widths
    (progressive initialization).
    """

    def __init__(
        self, level_set: str, bits: int, signed: bool, alpha: float, normalize: bool = False
    ) -> None:
        super().__init__()
        self.level_set, self.bits, self.signed, self.normalize = level_set, bits, signed, normalize
        grid = make_levels(level_set, bits, signed)
        cells = grid_cells(grid)
        self.register_buffer("levels", grid.float(), persistent=False)
        table = None if cells is None else grid_table(grid, cells).float()
        self.register_buffer("table", table, persistent=False)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = normalize_weight(x)
        return rcf_quantize(x, self.alpha, self.levels, self.signed, self.table)

    def extra_repr(self) -> str:
        kind = "signed" if self.signed else "unsigned"
        norm = ", weight_norm" if self.normalize else ""
        return f"{self.level_set}, bits={self.bits}, {kind}{norm}"
