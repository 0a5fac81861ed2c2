"""Inputs rounded onto a quantizer's grid in the quantizer's own float32 arithmetic, as tensor
code the ONNX exporter turns into Mul / Div / Round / Floor / Clip / Gather / Where.

``rounding(grid, (codes, divisor))`` builds one module per rule of ``lowbit.export.grids``
that outputs the integer codes ``codes[level] = divisor * level`` (as floats) for an integer
layer to cast to 8 bits; ``rounding(grid)`` one that outputs the quantized values ``scale *
level`` (a float layer's input). Each rule repeats the operations of the quantizer that was trained,
in order, so that inputs at or within float rounding of a decision boundary round as in the
fake-quant model; only an input of -0.0 on UniQ's symmetric grid differs (``SymmetricCode``).
These formulas mirror ``lowbit.export.runtime.ActivationQuantizer``, which computes them in
place and by fused lookups that the exporter cannot trace.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.grids import QuantizerGrid, grid_levels, integer_levels
from lowbit.quant.project import grid_cells, grid_position, grid_table


class NearestLevel(nn.Module):
    """``"nearest"``: ``table[floor(clamp(x * multiplier - offset, 0, cells))]``, RCF's grid
    lookup (``lowbit.quant.project``) with its float32 multiplier and offset: every decision
    boundary is a cell edge, ties go to the larger level."""

    def __init__(self, table: torch.Tensor, multiplier: torch.Tensor, offset: float) -> None:
        super().__init__()
        self.register_buffer("table", table.float())
        self.register_buffer("multiplier", multiplier.float().reshape(()))
        self.offset, self.cells = offset, table.numel() - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        position = x * self.multiplier
        if self.offset != 0:
            position = position - self.offset
        return self.table[position.clamp(0, self.cells).floor().to(torch.int32)]


class DividedNearest(nn.Module):
    """``"nearest_divided"``: the APoT authors' ``project_divided``: ``u = x / alpha`` (signed
    grids: ``|u|``, sign kept), then of the two levels around ``u`` the one whose float32
    distance is smaller, ties to the lower. The two levels come from a floor on the grid
    ``1 / divisor``, on which every level lies; where ``u * divisor`` rounds up onto a level
    the pair is one level higher, and the distances still pick that level, as the
    quantizer does."""

    def __init__(
        self, alpha: torch.Tensor, levels: torch.Tensor, outputs: torch.Tensor, divisor: int,
        signed: bool,
    ) -> None:
        super().__init__()
        numerators = torch.round(levels.double() * divisor).long()
        first, last = int(numerators[0]), int(numerators[-1])
        cells = torch.arange(first, last)  # the pair of cell j: the levels around j / divisor
        below = torch.bucketize(cells, numerators, right=True) - 1
        self.register_buffer("alpha", alpha.float().reshape(()))
        self.register_buffer("levels", levels.float())
        self.register_buffer("outputs", outputs.float())
        self.register_buffer("below", below)
        self.divisor, self.first, self.last, self.signed = divisor, first, last, signed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x / self.alpha
        magnitude = u.abs() if self.signed else u
        cell = (magnitude * self.divisor).clamp(self.first, self.last - 1).floor()
        below = self.below[cell.to(torch.int64) - self.first]
        lower, upper = self.levels[below], self.levels[below + 1]
        chosen = torch.where(upper - magnitude < magnitude - lower, below + 1, below)
        out = self.outputs[chosen]
        return out * u.sign() if self.signed else out


class RoundedCode(nn.Module):
    """``"round"``: ``clamp(round(x / step), first, last) * factor``, half to even (LSQ, UniQ's
    unsigned grid, two-sided PACT); ``"half_up"``: ``floor(x / step + 1/2)`` instead (RQ and
    SRQ in evaluation)."""

    def __init__(
        self, step: torch.Tensor, first: float, last: float, factor: torch.Tensor | float,
        half_up: bool,
    ) -> None:
        super().__init__()
        self.register_buffer("step", step.float().reshape(()))
        self.register_buffer("factor", torch.as_tensor(factor).float().reshape(()))
        self.first, self.last, self.half_up = first, last, half_up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = x / self.step
        code = (code + 0.5).floor() if self.half_up else code.round()
        return code.clamp(self.first, self.last) * self.factor


class ClippedRound(nn.Module):
    """``"clip_round"``: PACT's ``round(clamp(x, lo, hi) * (divisor / scale)) * factor``."""

    def __init__(
        self, low: torch.Tensor, high: torch.Tensor, inverse: torch.Tensor, factor: torch.Tensor
    ) -> None:
        super().__init__()
        for name, value in (("low", low), ("high", high), ("inverse", inverse),
                            ("factor", factor)):
            self.register_buffer(name, value.float().reshape(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clipped = torch.minimum(torch.maximum(x, self.low), self.high)
        return (clipped * self.inverse).round() * self.factor


class SymmetricCode(nn.Module):
    """``"symmetric"``: ``sign(x) (min(floor(|x / step|), top) + 1/2) factor``, UniQ's
    half-integer codes by magnitude (Eq. 3). ONNX has no copysign: an input of -0.0 gets the
    positive code (the quantizer gives it the negative one)."""

    def __init__(self, step: torch.Tensor, top: float, factor: torch.Tensor | float) -> None:
        super().__init__()
        self.register_buffer("step", step.float().reshape(()))
        self.register_buffer("factor", torch.as_tensor(factor).float().reshape(()))
        self.top = top

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        magnitude = (x / self.step).abs().floor().clamp(max=self.top) + 0.5
        return torch.where(x < 0, -magnitude, magnitude) * self.factor


def rounding(
    grid: QuantizerGrid, integer: tuple[torch.Tensor, int] | None = None
) -> nn.Module:
    """The module that rounds an input onto ``grid`` by its rule: to the integer codes of
    ``integer = (codes, divisor)`` (``lowbit.export.grids.integer_levels``: ``codes = divisor
    * levels``) when given, else to the quantized values."""
    codes, divisor = integer if integer is not None else (None, 1)
    levels = grid_levels(grid.spec)
    scale = grid.scale.float()
    if grid.rule == "nearest":
        return _nearest(levels, scale, codes)
    if grid.rule == "nearest_divided":
        found = integer_levels(grid.spec)
        if found is None:
            raise LowbitError(
                f"the {grid.spec['levels']} levels are no integers over a small divisor; "
                "ONNX cannot round onto them"
            )
        signed = bool(levels[0] < 0)
        kept = levels >= 0  # a signed grid: magnitudes, the sign kept apart
        # The level times alpha, as the quantizer multiplies, or its integer code.
        outputs = levels[kept].float() * scale if codes is None else codes[kept].float()
        return DividedNearest(scale, levels[kept], outputs, found[1], signed)
    if grid.spec["levels"] != "integer":
        raise LowbitError(f"the rounding rule {grid.rule!r} needs an integer grid spec")
    spec_divisor = grid.spec["divisor"]
    first = float(grid.spec["first"])
    last = first + grid.spec["count"] - 1
    # Codes c of level c / spec_divisor; as integers, c * divisor / spec_divisor.
    if grid.rule == "clip_round":
        factor = scale / spec_divisor if codes is None else torch.tensor(divisor / spec_divisor)
        low, high = float(levels[0]) * scale, float(levels[-1]) * scale
        return ClippedRound(low, high, spec_divisor / scale, factor)
    step = scale / spec_divisor
    factor = step if codes is None else torch.tensor(divisor / spec_divisor)
    if grid.rule == "symmetric":
        return SymmetricCode(step, last - 0.5, factor)
    if grid.rule in ("round", "half_up"):
        return RoundedCode(step, first, last, factor, grid.rule == "half_up")
    raise LowbitError(f"ONNX export does not know the input rounding rule {grid.rule!r}")


def _nearest(levels: torch.Tensor, scale: torch.Tensor, codes: torch.Tensor | None) -> nn.Module:
    cells = grid_cells(levels)
    if cells is None:
        raise LowbitError(
            f"an input grid of {levels.numel()} levels has no regular grid of decision "
            "boundaries; ONNX cannot round onto it"
        )
    table = grid_table(levels, cells)
    multiplier, offset = grid_position(
        table.float(), float(levels[0]), float(levels[-1]), scale
    )
    if codes is None:
        outputs = table.float() * scale  # the quantizer's own scaled table
    else:
        outputs = codes[torch.bucketize(table, levels)].float()
    return NearestLevel(outputs, torch.as_tensor(multiplier), offset)
