"""Nearest-level projection, elementwise.

Two exact ways, chosen by the level set, both elementwise (nothing of size
``numel x n_levels`` is ever built):

* **Grid lookup** (APoT, uniform, and PoT up to 4 bits): when every decision boundary (the
  midpoint of two neighbouring levels) lies on a regular grid of at most ``MAX_GRID_CELLS``
  cells, the cell of ``x`` is one multiply and one truncation, and a table maps each cell to
  its level. APoT's levels are dyadic fractions times gamma, so their grid is small (192 cells
  at 4 bits).
* **Binary search** otherwise: ``torch.bucketize`` among the boundaries, then a gather.

Tie rule (both ways): a value exactly half-way between two levels goes to the larger level,
as in round-half-up (for half-way points that floating point represents exactly; others are
decided by the rounding of ``x``). Values outside ``[levels[0], levels[-1]]`` go to the end
levels.

These are PyTorch formulas for every device; RCF's operator (``lowbit.quant.apot``) runs both
ways as fused kernels on float32 CPU tensors (``lowbit.quant.native``), with the same results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import torch

MAX_GRID_CELLS = 2**16


def midpoints(levels: torch.Tensor) -> torch.Tensor:
    """Decision boundaries of a sorted level set: the means of neighbouring levels."""
    return (levels[1:] + levels[:-1]) / 2


def grid_cells(levels: torch.Tensor) -> int | None:
    """Smallest C such that every boundary is ``lo + (hi - lo) * j / C`` for an integer j.

    ``None`` when C would exceed ``MAX_GRID_CELLS`` (e.g. PoT at 5 bits: 2**-30 apart).
    """
    lo, hi = float(levels[0]), float(levels[-1])
    cells = 1
    for boundary in midpoints(levels.double()).tolist():
        position = (boundary - lo) / (hi - lo)
        fraction = Fraction(position).limit_denominator(MAX_GRID_CELLS)
        if abs(float(fraction) - position) > 1e-12:
            return None
        cells = cells * fraction.denominator // math.gcd(cells, fraction.denominator)
        if cells > MAX_GRID_CELLS:
            return None
    return cells


def grid_table(levels: torch.Tensor, cells: int) -> torch.Tensor:
    """Level of every grid cell (``cells + 1`` entries; the last one is the point ``hi``)."""
    levels = levels.double()
    lo, hi = float(levels[0]), float(levels[-1])
    centres = lo + (hi - lo) * (torch.arange(cells + 1, dtype=torch.float64) + 0.5) / cells
    return levels[torch.bucketize(centres, midpoints(levels), right=True)]


def grid_position(
    table: torch.Tensor, lo: float, hi: float, scale: torch.Tensor | float = 1.0
) -> tuple[torch.Tensor | float, float]:
    """``(multiplier, offset)`` such that the cell of ``x`` on the grid of ``table`` (from
    ``grid_table``, for levels from ``lo`` to ``hi`` times ``scale``) is
    ``int(clamp(x * multiplier - offset, 0, cells))``."""
    cells = table.numel() - 1
    return cells / ((hi - lo) * scale), lo * cells / (hi - lo)


def in_memory_order(fn: Callable[..., torch.Tensor], x: torch.Tensor, *args) -> torch.Tensor:
    """``fn(flat, *args)`` of an elementwise ``fn`` of the 1-D ``flat``, taken over ``x`` in
    the order of its memory: a dense ``x`` of any layout (channels-last) is not copied, and the
    result is laid out as ``x``, as ``torch.empty_like(x)`` (the operators' fake tensors) is."""
    order = sorted(range(x.dim()), key=x.stride().__getitem__, reverse=True)
    dense = x.permute(order)
    out = fn(dense.reshape(-1), *args).view(dense.shape)
    return out.permute(sorted(range(x.dim()), key=order.__getitem__))


def project_on_grid(
    x: torch.Tensor,
    table: torch.Tensor,
    lo: float,
    hi: float,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Nearest of ``scale * levels`` by grid lookup; ``table`` from ``grid_table(levels, C)``
    already multiplied by ``scale``, ``lo`` / ``hi`` the unscaled end levels."""
    multiplier, offset = grid_position(table, lo, hi, scale)
    return in_memory_order(_grid_lookup, x, table, multiplier, offset)


def _grid_lookup(
    x: torch.Tensor, table: torch.Tensor, multiplier: torch.Tensor | float, offset: float
) -> torch.Tensor:
    position = x.mul(multiplier)
    if offset != 0:
        position.sub_(offset)
    position.clamp_(0, table.numel() - 1)
    # Truncation = floor, as position >= 0; float32 positions become their int32 cell in place
    # (one buffer fewer to allocate and fault in).
    if position.element_size() == 4:
        index = position.view(torch.int32).copy_(position)
    else:
        index = position.to(torch.int32)
    return table.index_select(0, index)


def project_by_search(
    x: torch.Tensor, levels: torch.Tensor, boundaries: torch.Tensor
) -> torch.Tensor:
    """Nearest of ``levels`` by binary search among ``boundaries`` (scaled alike)."""
    return in_memory_order(_search, x, levels, boundaries)


def _search(x: torch.Tensor, levels: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    return levels.index_select(0, torch.bucketize(x, boundaries, out_int32=True, right=True))


def project_to_levels(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Nearest element of the sorted 1-D ``levels`` for every element of ``x``."""
    levels = levels.to(device=x.device)
    cells = grid_cells(levels)
    if cells is None:
        levels = levels.to(x.dtype)
        return project_by_search(x, levels, midpoints(levels))
    table = grid_table(levels, cells).to(device=x.device, dtype=x.dtype)
    return project_on_grid(x, table, float(levels[0]), float(levels[-1]))
