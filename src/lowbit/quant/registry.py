"""One table from method names to quantizer factories.

Adding a method is one module under ``lowbit.quant`` and one ``register_method`` line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn

from lowbit.errors import LowbitError
from lowbit.quant.apot import RCFQuantizer
from lowbit.quant.dorefa import DoReFaWeightQuantizer
from lowbit.quant.lloyd import LloydQuantizer
from lowbit.quant.maxscale import MaxScaleQuantizer
from lowbit.quant.pact import PACTQuantizer
from lowbit.quant.rq import RQQuantizer
from lowbit.quant.srq import SRQQuantizer
from lowbit.quant.uniq import (
    lsq_input_quantizer,
    lsq_weight_quantizer,
    uniq_input_quantizer,
    uniq_weight_quantizer,
)

QuantizerFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class Method:
    """How a method quantizes a layer: factories called as ``factory(bits, **options)``;
    ``input_quantizer=None`` leaves layer inputs float (a weight-only method). Every input
    factory takes ``signed``: ``False`` for non-negative inputs (after a ReLU), ``True`` for
    inputs that can be negative (a two-sided grid of the same method).

    ``first_last_method`` names the method of the first and last quantized layers (their
    paper's treatment at ``first_last_bits``), ``None`` for this method itself.

    What the method can do beyond training at one bit-width, declared here rather than
    inferred from its quantizers' classes or signatures:

    * ``switchable``: both factories take ``bit_widths`` (a set of bit-widths) and the
      quantizers they build switch among them at run time (``set_bits``): CoQuant / AdaBits
      training, ``adaptive.bits``, ``lowbit.adaptive.make_adaptive``.
    * ``export_grid``: a trained layer outputs ``scale * levels[code]`` on a fixed integer
      grid (``lowbit.export.grids`` describes it), so ``lowbit export``, the deploy runtime and
      the grid-based analyses (``lowbit plot``, weight error) accept it."""

    name: str
    weight_quantizer: QuantizerFactory
    input_quantizer: QuantizerFactory | None
    min_bits: int
    max_bits: int
    summary: str
    first_last_method: str | None = None
    switchable: bool = False
    export_grid: bool = False

    def check_bits(self, bits: int, what: str = "bits") -> None:
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise LowbitError(f"{what} must be a whole number, got {bits!r}")
        if not self.min_bits <= bits <= self.max_bits:
            raise LowbitError(
                f"method {self.name!r} supports {self.min_bits}..{self.max_bits} bits, "
                f"got {what}={bits}"
            )


# The boolean fields of Method that say what a method can do.
CAPABILITIES = ("switchable", "export_grid")
_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (its name must be new)."""
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; a clear error lists the known names otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        raise LowbitError(
            f"unknown method {name!r}; available: {', '.join(available_methods())}"
        ) from None


def available_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_METHODS)


def methods_with(capability: str) -> list[str]:
    """Names of the registered methods whose ``capability`` (one of ``CAPABILITIES``) is
    true, sorted: what an error for a method without it offers instead."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; use one of {CAPABILITIES}")
    return [name for name in available_methods() if getattr(_METHODS[name], capability)]


def _rcf_input(
    quantizer: QuantizerFactory, bits: int, signed: bool = False, **options
) -> RCFQuantizer:
    return quantizer(bits, signed, **{"alpha": 8.0, **options})


def _rcf_method(
    level_set: str, summary: str, quantizer: QuantizerFactory | None = None,
    export_grid: bool = True,
) -> Method:
    # APoT §4.2 CIFAR init: alpha 3.0 on normalized weights, 8.0 on activations. Weights get
    # the identity gradient (§2.5). First and last layers: 8-bit weights at steps of max(W),
    # inputs float, as the APoT authors' code does them (APoT §4: "8-bit").
    # ``quantizer(bits, signed, **options)``: RCF on the named level set unless given.
    quantizer = quantizer or partial(RCFQuantizer, level_set)
    return Method(
        name=level_set,
        weight_quantizer=partial(
            quantizer, signed=True, alpha=3.0, normalize=True, clip_input_gradient=False,
        ),
        input_quantizer=partial(_rcf_input, quantizer),
        min_bits=2,
        max_bits=8,
        summary=summary,
        first_last_method="maxscale",
        export_grid=export_grid,
    )


register_method(_rcf_method("apot", "APoT: additive powers-of-two levels, RCF, weight norm"))
register_method(_rcf_method("pot", "powers-of-two levels, RCF, weight norm (APoT Table 3)"))
register_method(_rcf_method("uniform", "uniform levels, RCF, weight norm (APoT Table 3)"))
# Float levels: no integer grid to export, float multiplications (APoT Table 3's 1.81G).
register_method(_rcf_method("lloyd", "Lloyd-Max levels refit to the data, RCF, weight norm "
                            "(APoT Table 3)", LloydQuantizer, export_grid=False))
register_method(Method("uniq", uniq_weight_quantizer, uniq_input_quantizer, 1, 8,
                       "UniQ: symmetric levels, learned step, MSE-optimal init, down to 1 bit",
                       export_grid=True))
register_method(Method("lsq", lsq_weight_quantizer, lsq_input_quantizer, 2, 8,
                       "LSQ: two's-complement levels, learned step, 2E|x|/sqrt(Q_P) init",
                       export_grid=True))
register_method(Method("rq", RQQuantizer, partial(RQQuantizer, signed=False), 2, 8,
                       "RQ: Gumbel-softmax over a logistic-noise grid; anneal=True for App. F",
                       export_grid=True))
register_method(Method("srq", SRQQuantizer, partial(SRQQuantizer, signed=False), 2, 8,
                       "SRQ: mode of the grid categorical, multi-class straight-through",
                       export_grid=True))
register_method(Method("srq-dropbits", partial(SRQQuantizer, masks="bitwise"),
                       partial(SRQQuantizer, signed=False), 2, 8,
                       "SRQ + DropBits masks on weights; l0_lambda>0 learns bit-widths",
                       export_grid=True))
register_method(Method("maxscale", MaxScaleQuantizer, None, 2, 16,
                       "weights rounded to steps of max(W)/(2^(b-1)-1), inputs float (APoT "
                       "authors' first/last layers)", export_grid=True))
register_method(Method("dorefa", DoReFaWeightQuantizer,
                       partial(PACTQuantizer, alpha=1.0, learn_alpha=False), 2, 8,
                       "DoReFa: tanh-normalized weights (UniQ Eq. 2), inputs clipped to [0, 1]",
                       switchable=True, export_grid=True))
register_method(Method("pact", DoReFaWeightQuantizer, PACTQuantizer, 2, 8,
                       "PACT: learned clipping level alpha on inputs, DoReFa weights",
                       switchable=True, export_grid=True))
# CoQuant's tables come from AdaBits' code: its "modified" weight rounding and autograd's alpha
# gradient through its PACT formula.
register_method(Method("coquant", partial(DoReFaWeightQuantizer, scheme="modified"),
                       partial(PACTQuantizer, alpha_gradient="adabits"), 2, 8,
                       "CoQuant/AdaBits: nested DoReFa bins, PACT; adaptive.bits switches",
                       switchable=True, export_grid=True))
