"""What a trained lowbit quantizer computes, as a level set, a scale and a rounding rule.

Every supported quantizer outputs ``scale * levels[code]`` for an integer ``code``:

* ``RCFQuantizer`` (apot, pot, uniform): ``levels`` is the normalized set of APoT Eq. 2-6
  (``lowbit.levels``), ``scale`` is alpha; inputs go to the nearest level (``"nearest"``).
* ``LearnedStepQuantizer`` (UniQ, LSQ): ``levels`` are the integer (or, UniQ's symmetric grid,
  half-integer) codes ``q_min .. q_max``, ``scale`` the step (one per output channel when
  kernel-wise); inputs round half to even (``"round"``) or, symmetric grid, by magnitude
  (``"symmetric"``).
* ``MaxScaleQuantizer`` (the APoT authors' 8-bit first and last layers): weights only;
  ``levels`` are ``k / (2**(bits-1) - 1)`` over the codes the weight actually uses, ``scale``
  its largest value.

A level set is described by a small JSON spec (``grid_levels`` regenerates it exactly), so an
export names its grids instead of storing them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.quant.apot import WEIGHT_NORMALIZATIONS, RCFQuantizer, weight_statistics
from lowbit.quant.levels import apot_terms
from lowbit.quant.levels import levels as named_levels
from lowbit.quant.maxscale import MaxScaleQuantizer
from lowbit.quant.registry import get_method, methods_with
from lowbit.quant.uniq import LearnedStepQuantizer

GridSpec = dict[str, Any]


@dataclass(frozen=True)
class QuantizerGrid:
    """``output = scale * levels[code]`` with ``levels = grid_levels(spec)``; ``scale`` has
    shape ``()`` (per layer) or ``(C,)`` (per output channel); ``rule`` says how an input
    is rounded onto the grid (the deploy runtime repeats it for activations)."""

    spec: GridSpec
    scale: torch.Tensor
    rule: str


def grid_levels(spec: GridSpec) -> torch.Tensor:
    """The sorted float64 levels of a grid spec: ``{"levels": "apot" | "pot" | "uniform",
    "bits", "signed"}`` (``lowbit.levels``) or ``{"levels": "integer", "first", "count",
    "divisor"}`` (``(first + k) / divisor`` for ``k < count``)."""
    if spec["levels"] == "integer":
        codes = spec["first"] + torch.arange(spec["count"], dtype=torch.float64)
        return codes / spec["divisor"]
    return named_levels(spec["levels"], spec["bits"], spec["signed"])


def code_bits(spec: GridSpec) -> int:
    """Bits of one code: enough to index every level."""
    return max(1, (grid_levels(spec).numel() - 1).bit_length())


def pot_terms(spec: GridSpec) -> tuple[torch.Tensor, float] | None:
    """The shift-add form of an APoT / PoT grid (APoT Eq. 5-6, Fig. 3): a table of
    power-of-two exponents, one row per level and one column per additive term (-1 where the
    term is zero), and gamma, so that ``level = sign * sum(2**-e) / gamma``. ``None`` for
    grids that are not sums of powers of two."""
    family = spec["levels"]
    if family not in ("apot", "pot"):
        return None
    magnitude_bits = spec["bits"] - 1 if spec["signed"] else spec["bits"]
    if family == "pot":
        choices = [[0.0] + [2.0**-e for e in range(2**magnitude_bits - 1)]]
    else:
        choices = apot_terms(magnitude_bits)
    combinations = [[]]
    for options in choices:
        combinations = [combo + [value] for combo in combinations for value in options]
    gamma = max(sum(combo) for combo in combinations)
    # Keyed by the level exactly as lowbit.levels computes it (sum / gamma in float64).
    terms_of = {}
    for combo in combinations:
        terms_of.setdefault(sum(combo) / gamma, combo)
    rows = [
        [-1 if term == 0 else -math.frexp(term)[1] + 1 for term in terms_of[abs(level)]]
        for level in grid_levels(spec).tolist()
    ]
    return torch.tensor(rows, dtype=torch.int64), gamma


def _rcf(quantizer: RCFQuantizer, weight: torch.Tensor | None) -> QuantizerGrid:
    spec = {"levels": quantizer.level_set, "bits": quantizer.bits, "signed": quantizer.signed}
    return QuantizerGrid(spec, quantizer.output_scale(weight).float(), "nearest")


def _learned_step(quantizer: LearnedStepQuantizer, weight: torch.Tensor | None) -> QuantizerGrid:
    if not quantizer.initialized:
        raise LowbitError(
            "a learned-step quantizer has no step size yet; calibrate or train the model "
            "(lowbit.nn.calibrate) first"
        )
    count = int(quantizer.q_max - quantizer.q_min) + 1
    spec = {"levels": "integer", "first": quantizer.q_min, "count": count, "divisor": 1}
    rule = "symmetric" if quantizer.grid == "symmetric" else "round"
    return QuantizerGrid(spec, quantizer.step.detach().float(), rule)


def _max_scale(quantizer: MaxScaleQuantizer, weight: torch.Tensor | None) -> QuantizerGrid:
    if weight is None:
        raise LowbitError("maxscale quantizes weights only; it cannot quantize layer inputs")
    steps = 2 ** (quantizer.bits - 1) - 1
    scale = weight.detach().float().max()
    if not scale > 0:
        raise LowbitError("a maxscale layer without a positive weight has no scale to export")
    codes = torch.round(weight.detach().float() / scale * steps)
    first, last = int(codes.min()), int(codes.max())
    spec = {"levels": "integer", "first": first, "count": last - first + 1, "divisor": steps}
    return QuantizerGrid(spec, scale, "round")


_NO_GRID = (
    "has no fixed integer grid (export, the deploy runtime, plots and the weight-error "
    "analysis need one); methods with one: "
)
# How each quantizer class maps to its levels. Whether a method has such a grid at all is the
# registry's answer (Method.export_grid), not this table's.
_GRIDS: dict[type, Callable[[Any, torch.Tensor | None], QuantizerGrid]] = {
    RCFQuantizer: _rcf,
    LearnedStepQuantizer: _learned_step,
    MaxScaleQuantizer: _max_scale,
}


def quantizer_grid(quantizer: nn.Module, weight: torch.Tensor | None = None) -> QuantizerGrid:
    """The grid of a trained quantizer; ``weight`` is the tensor it quantizes (weights only).

    Only quantizers of methods the registry declares with ``export_grid`` have one (RQ, SRQ,
    DropBits, DoReFa, PACT and CoQuant do not); ``lowbit.quantize`` records the method on each
    quantizer it builds (``lowbit_method``). A quantizer built by hand is described by its
    class when this module knows it.
    """
    method = getattr(quantizer, "lowbit_method", None)
    describe = _GRIDS.get(type(quantizer))
    if method is not None and not get_method(method).export_grid:
        raise LowbitError(f"method {method!r} {_NO_GRID}{', '.join(methods_with('export_grid'))}")
    if describe is None and method is None:
        raise LowbitError(
            f"{type(quantizer).__name__} (not built by lowbit.quantize) {_NO_GRID}"
            f"{', '.join(methods_with('export_grid'))}"
        )
    if describe is None:
        raise LowbitError(
            f"method {method!r} declares an integer grid, but lowbit.export.grids cannot "
            f"describe its {type(quantizer).__name__}; add it to _GRIDS"
        )
    return describe(quantizer, weight)


def quantizer_input(
    quantizer: nn.Module, x: torch.Tensor, output_units: bool = True
) -> torch.Tensor:
    """What ``quantizer`` clips and projects: ``x``, or for an RCF weight quantizer with
    weight normalization the normalized weights of APoT Eq. 9 (W tilde of Eq. 14). In the
    units of the quantizer's output (``output_units``) those are multiplied by ``std + eps``
    when the quantizer rescales its output (``W - mean``)."""
    if isinstance(quantizer, RCFQuantizer) and quantizer.normalize:
        mean, divisor = weight_statistics(x, **WEIGHT_NORMALIZATIONS[quantizer.normalization])
        return x - mean if quantizer.rescale and output_units else (x - mean) / divisor
    return x
