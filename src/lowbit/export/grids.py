"""What a trained lowbit quantizer computes, as a level set, a scale and a rounding rule.

Every supported quantizer outputs ``scale * levels[code]`` for an integer ``code``:

* ``RCFQuantizer`` (apot, pot, uniform): ``levels`` is the normalized set of APoT Eq. 2-6
  (``lowbit.levels``), ``scale`` is alpha; inputs go to the nearest level (``"nearest"``);
  with ``divide_first`` (the APoT authors' rounding) in its arithmetic: ``x / alpha``, then
  the nearer level by the two float32 distances, ties to the lower (``"nearest_divided"``).
* ``LearnedStepQuantizer`` (UniQ, LSQ): ``levels`` are the integer (or, UniQ's symmetric grid,
  half-integer) codes ``q_min .. q_max``, ``scale`` the step (one per output channel when
  kernel-wise); inputs round half to even (``"round"``) or, symmetric grid, by magnitude
  (``"symmetric"``).
* ``MaxScaleQuantizer`` (the APoT authors' 8-bit first and last layers): weights only;
  ``levels`` are ``k / (2**(bits-1) - 1)`` over the codes the weight actually uses, ``scale``
  its largest value. Nothing is clipped, so a weight below ``-max(W)`` takes a code beyond
  ``-(2**(bits-1) - 1)``: the grid can need a bit more than ``bits`` (``code_bits``).
* ``DoReFaWeightQuantizer`` (DoReFa, PACT and CoQuant weights, UniQ Eq. 2): ``2**bits``
  levels evenly spaced in ``[-1, 1]`` (``"original"``: the ends included; AdaBits' roundings:
  their bins' left edges or centres), ``scale`` the ``rescale`` factor ``std(w) / std(q)``
  (times the spacing of AdaBits' integer or half-integer codes); weights only.
* ``PACTQuantizer`` (PACT, DoReFa and CoQuant inputs) at the current bit-width: levels
  ``k / (2**bits - 1)`` for ``k = 0 .. 2**bits - 1`` and ``scale`` alpha, inputs clipped to
  ``[0, alpha]`` and rounded half to even in PACT's arithmetic (``"clip_round"``); signed,
  integer codes ``-(2**(bits-1) - 1) .. 2**(bits-1) - 1`` times the step, ``"round"``.
* ``RQQuantizer``, ``SRQQuantizer`` (RQ, SRQ, SRQ + DropBits): in evaluation both round to
  the nearest grid point ``alpha * k`` (RQ Algorithm 3, SRQ Algorithm 1's DEPLOYMENT) as
  ``floor(x / alpha + 1/2)``, ties up (``"half_up"``); with DropBits' learned bit-widths
  (weights), the nearest point whose level is kept, and the grid spans the kept points only
  (the learned bit-width).

A switchable quantizer (CoQuant) is described at its current bit-width
(``lowbit.export.bit_width.single_bit_width`` picks it).

A level set is described by a small JSON spec (``grid_levels`` regenerates it exactly), so an
export names its grids instead of storing them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.quant.apot import WEIGHT_NORMALIZATIONS, RCFQuantizer, weight_statistics
from lowbit.quant.dorefa import MIN_STD, DoReFaWeightQuantizer, dorefa_weight_quantize
from lowbit.quant.levels import apot_terms
from lowbit.quant.levels import levels as named_levels
from lowbit.quant.logistic_grid import LogisticGrid
from lowbit.quant.maxscale import MaxScaleQuantizer
from lowbit.quant.pact import PACTQuantizer
from lowbit.quant.registry import get_method, methods_with
from lowbit.quant.rq import RQQuantizer
from lowbit.quant.srq import SRQQuantizer
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
    "bits", "signed"}`` (``lowbit.levels``), ``{"levels": "integer", "first", "count",
    "divisor"}`` (``(first + k) / divisor`` for ``k < count``) or ``{"levels": "dorefa",
    "bits"}`` (``2 j / L - 1`` for ``j = 0 .. L``, ``L = 2**bits - 1``, UniQ Eq. 2)."""
    if spec["levels"] == "integer":
        codes = spec["first"] + torch.arange(spec["count"], dtype=torch.float64)
        return codes / spec["divisor"]
    if spec["levels"] == "dorefa":
        top = 2 ** spec["bits"] - 1
        return (2 * torch.arange(top + 1, dtype=torch.float64) - top) / top
    return named_levels(spec["levels"], spec["bits"], spec["signed"])


def output_levels(spec: GridSpec) -> torch.Tensor:
    """The float32 value of every level as its quantizer outputs it, so that decoded codes
    are its output bit for bit: ``grid_levels`` rounded to float32, except DoReFa's, which
    ``dorefa_weight_quantize`` computes as ``2 * (j / L) - 1`` in float32 (rounded twice,
    an ulp off the nearest float32 for about half of them)."""
    if spec["levels"] == "dorefa":
        top = 2 ** spec["bits"] - 1
        return 2 * (torch.arange(top + 1, dtype=torch.float32) / top) - 1
    return grid_levels(spec).float()


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
    rule = "nearest_divided" if quantizer.divide_first else "nearest"
    return QuantizerGrid(spec, quantizer.output_scale(weight).float(), rule)


def _integer_spec(first: float, last: float, divisor: int = 1) -> GridSpec:
    """The levels ``first / divisor, (first + 1) / divisor, ..., last / divisor``."""
    return {"levels": "integer", "first": first, "count": int(last - first) + 1,
            "divisor": divisor}


def _check_initialized(quantizer: nn.Module) -> None:
    # Data-initialized quantizers (UniQ, LSQ, RQ, SRQ) set their scale on their first input;
    # before that the grid is a placeholder the next forward would replace.
    if not quantizer.initialized:
        raise LowbitError(
            f"a {type(quantizer).__name__} has no scale yet; calibrate or train the model "
            "(lowbit.nn.calibrate) first"
        )


def _weights_only(weight: torch.Tensor | None, method: str) -> torch.Tensor:
    if weight is None:
        raise LowbitError(f"{method} quantizes weights only; it cannot quantize layer inputs")
    return weight.detach().float()


def _learned_step(quantizer: LearnedStepQuantizer, weight: torch.Tensor | None) -> QuantizerGrid:
    _check_initialized(quantizer)
    spec = _integer_spec(quantizer.q_min, quantizer.q_max)
    rule = "symmetric" if quantizer.grid == "symmetric" else "round"
    return QuantizerGrid(spec, quantizer.step.detach().float(), rule)


def _max_scale(quantizer: MaxScaleQuantizer, weight: torch.Tensor | None) -> QuantizerGrid:
    weight = _weights_only(weight, "maxscale")
    steps = 2 ** (quantizer.bits - 1) - 1
    scale = weight.max()
    if not scale > 0:
        raise LowbitError("a maxscale layer without a positive weight has no scale to export")
    codes = torch.round(weight / scale * steps)
    return QuantizerGrid(_integer_spec(int(codes.min()), int(codes.max()), steps), scale, "round")


def _dorefa(quantizer: DoReFaWeightQuantizer, weight: torch.Tensor | None) -> QuantizerGrid:
    """``2 q - 1`` of ``dorefa_weight_quantize`` at the current bits: ``"original"`` has the
    levels ``2 j / L - 1``, ``L = 2**b - 1`` (UniQ Eq. 2; the ``"dorefa"`` spec, decoded in the
    quantizer's own float32 arithmetic, ``output_levels``); ``"modified"`` / ``"centered"``
    have ``(c - 2**(b-1)) / 2**(b-1)`` for integer / half-integer codes ``c`` (their bins'
    left edges / centres). The rescaled output is all of that times ``std(w) / std(q)``."""
    weight = _weights_only(weight, "DoReFa")
    bits, scheme = quantizer.bits, quantizer.scheme
    if scheme == "original":
        spec, spacing = {"levels": "dorefa", "bits": bits}, 1.0
    else:  # levels spaced by a power of two: spacing * code is exact in float32
        half = 2 ** (bits - 1)
        first = -half + (0.5 if scheme == "centered" else 0)
        spec, spacing = _integer_spec(first, first + 2**bits - 1), 1 / half
    scale = torch.tensor(spacing)
    if quantizer.rescale:  # the same factor dorefa_weight_quantize multiplies by
        plain = dorefa_weight_quantize(weight, bits, scheme, rescale=False)
        scale = scale * (weight.std() / plain.std().clamp(min=MIN_STD))
    return QuantizerGrid(spec, scale.float(), "round")


def _pact(quantizer: PACTQuantizer, weight: torch.Tensor | None) -> QuantizerGrid:
    """``pact_quantize`` at the current bits. One-sided: the levels ``k / top``, ``top =
    2**b - 1``, times alpha, rounded as PACT computes it (``"clip_round"``: clipped to
    ``[0, alpha]``, times ``top / alpha``, half to even). Two-sided: integer codes from
    ``-top`` to ``top``, ``top = 2**(b-1) - 1``, times the step ``alpha / top`` (``"round"``:
    ``x / step`` half to even, as it computes it)."""
    bits, alpha = quantizer.bits, quantizer.current_alpha().detach().float()
    if quantizer.signed:
        top = 2 ** (bits - 1) - 1
        return QuantizerGrid(_integer_spec(-top, top), alpha / top, "round")
    top = 2**bits - 1
    return QuantizerGrid(_integer_spec(0, top, top), alpha, "clip_round")


def _logistic_grid(quantizer: LogisticGrid, weight: torch.Tensor | None) -> QuantizerGrid:
    """``alpha * k`` for ``k`` in the grid; with DropBits masks the points evaluation keeps
    (``DropBitsMasks.alive``: all of them unless bit-widths were learned), so the codes take
    the learned bit-width (SRQ §3.5, Table 3)."""
    _check_initialized(quantizer)
    first, last = quantizer.lo, quantizer.hi
    masks = getattr(quantizer, "masks", None)
    if masks is not None:
        kept = masks.kept_points()
        first, last = kept[0], kept[-1]
    return QuantizerGrid(_integer_spec(first, last), quantizer.alpha.detach().float(), "half_up")


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
    DoReFaWeightQuantizer: _dorefa,
    PACTQuantizer: _pact,
    RQQuantizer: _logistic_grid,
    SRQQuantizer: _logistic_grid,
}


def has_grid(quantizer: nn.Module) -> bool:
    """Whether ``quantizer_grid`` describes ``quantizer`` (its method declares a grid and this
    module knows its class)."""
    method = getattr(quantizer, "lowbit_method", None)
    known = type(quantizer) in _GRIDS
    return known and (method is None or get_method(method).export_grid)


def quantizer_grid(quantizer: nn.Module, weight: torch.Tensor | None = None) -> QuantizerGrid:
    """The grid of a trained quantizer; ``weight`` is the tensor it quantizes (weights only).

    Only quantizers of methods the registry declares with ``export_grid`` have one;
    ``lowbit.quantize`` records the method on each quantizer it builds (``lowbit_method``). A
    quantizer built by hand is described by its class when this module knows it. The grid is
    what the quantizer computes in evaluation mode (RQ's and SRQ's training forwards are
    random).
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


# Above this, a level set is not an integer grid worth storing (PoT from 5 bits: 2**-30 apart).
MAX_INTEGER_DIVISOR = 2**16


def integer_levels(spec: GridSpec) -> tuple[torch.Tensor, int] | None:
    """``(codes, divisor)``: the grid's levels as int64 integers over one common divisor,
    ``levels = codes / divisor`` exactly, with the smallest such divisor (APoT's unsigned 3-,
    4-, 5-bit levels are multiples of 1/10, 1/48, 1/100; UniQ's half-integer codes need 2).
    An integer kernel multiplies these codes and applies ``scale / divisor`` once. ``None``
    when the divisor would exceed ``MAX_INTEGER_DIVISOR``."""
    levels = grid_levels(spec)
    divisor = 1
    for level in levels.tolist():
        fraction = Fraction(level).limit_denominator(MAX_INTEGER_DIVISOR)
        if abs(float(fraction) - level) > 1e-12 * max(1.0, abs(level)):
            return None
        divisor = divisor * fraction.denominator // math.gcd(divisor, fraction.denominator)
        if divisor > MAX_INTEGER_DIVISOR:
            return None
    codes = torch.round(levels * divisor)
    return codes.to(torch.int64), divisor
