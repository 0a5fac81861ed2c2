"""Nearest-level projection in one pass over memory.

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
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from lowbit.quant import native

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


def project_on_grid(
    x: torch.Tensor,
    table: torch.Tensor,
    lo: float,
    hi: float,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Nearest of ``scale * levels`` by grid lookup; ``table`` from ``grid_table(levels, C)``
    already multiplied by ``scale``, ``lo`` / ``hi`` the unscaled end levels."""
    cells = table.numel() - 1
    multiplier = cells / ((hi - lo) * scale)
    if native.usable(x) and table.dtype == x.dtype:
        return native.grid_lookup(x, table, float(multiplier), lo * cells / (hi - lo))
    position = x.mul(multiplier)
    if lo != 0:
        position.sub_(lo * cells / (hi - lo))
    position.clamp_(0, cells)
    # Truncation = floor, as position >= 0; float32 positions become their int32 cell in place
    # (one buffer fewer to allocate and fault in).
    if position.element_size() == 4 and position.is_contiguous():
        index = position.view(torch.int32).copy_(position)
    else:
        index = position.to(torch.int32)
    return table.index_select(0, index.reshape(-1)).view_as(x)


def project_by_search(
    x: torch.Tensor, levels: torch.Tensor, boundaries: torch.Tensor
) -> torch.Tensor:
    """Nearest of ``levels`` by binary search among ``boundaries`` (scaled alike)."""
    if native.usable(x) and levels.dtype == boundaries.dtype == x.dtype:
        return native.search_lookup(x, levels, boundaries)
    index = torch.bucketize(x.reshape(-1), boundaries, out_int32=True, right=True)
    return levels.index_select(0, index).view_as(x)


def project_to_levels(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Nearest element of the sorted 1-D ``levels`` for every element of ``x``."""
    levels = levels.to(device=x.device)
    cells = grid_cells(levels)
    if cells is None:
        levels = levels.to(x.dtype)
        return project_by_search(x, levels, midpoints(levels))
    table = grid_table(levels, cells).to(device=x.device, dtype=x.dtype)
    return project_on_grid(x, table, float(levels[0]), float(levels[-1]))
