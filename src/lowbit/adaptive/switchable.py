"""One network, many bit-widths: switchable BatchNorm and ``set_bits`` over a quantized model.

``make_adaptive`` quantizes a plain model with a method the registry declares switchable
(``Method.switchable``: ``coquant``, ``pact``, ``dorefa``), giving every layer but the first
and the last (and those the overrides name) the whole bit-width set, and replaces every
BatchNorm with a ``SwitchableBatchNorm``: one BatchNorm per bit-width, since each precision
sees its own activation statistics (AdaBits §3, CoQuant supplement §3). The weights stay
shared. A module takes part in switching when it has a non-empty ``bit_widths``;
``set_bits(model, b)`` sets them all at once.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.nn.quantize import LayerSpec, quantizable_layers, quantize, set_submodule
from lowbit.quant.bit_widths import check_bit_widths, check_bits, nearest_index
from lowbit.quant.registry import get_method, methods_with

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class SwitchableBatchNorm(nn.Module):
    """One copy of ``norm`` per bit-width; the current bits pick which one runs.

    A bit-width outside the set (zero-shot) uses the nearest one's BatchNorm: recalibrate its
    running statistics (``recalibrate_batchnorm``) on a copy of the model before testing.
    """

    def __init__(self, norm: nn.Module, bit_widths: Sequence[int]) -> None:
        super().__init__()
        self.bit_widths = check_bit_widths(bit_widths)
        self.norms = nn.ModuleDict({str(b): copy.deepcopy(norm) for b in self.bit_widths})
        self.bits = self.bit_widths[0]

    def set_bits(self, bits: int) -> None:
        self.bits = check_bits(bits)

    @property
    def active(self) -> nn.Module:
        """The BatchNorm used at the current bits."""
        return self.norms[str(self.bit_widths[nearest_index(self.bit_widths, self.bits)])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.active(x)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def switchable_modules(model: nn.Module) -> list[nn.Module]:
    """The modules ``set_bits`` switches: quantizers and BatchNorms built with a bit-width set."""
    return [m for m in model.modules() if getattr(m, "bit_widths", None)]


def model_bit_widths(model: nn.Module) -> tuple[int, ...]:
    """The bit-width set B ``model`` was trained for; an error for a single-precision model."""
    modules = switchable_modules(model)
    if not modules:
        raise LowbitError(
            "this model has one bit-width; train it with adaptive.bits (e.g. [8, 6, 4, 2]) to "
            "switch among several"
        )
    return modules[0].bit_widths


def set_bits(model: nn.Module, bits: int) -> nn.Module:
    """Switch every switchable layer and BatchNorm of ``model`` to ``bits`` (2..8); returns it."""
    check_bits(bits)
    modules = switchable_modules(model)
    if not modules:
        model_bit_widths(model)  # raises the explanation
    for module in modules:
        module.set_bits(bits)
    return model


def check_switchable_method(method: str) -> None:
    """A ``LowbitError`` unless the registry declares ``method`` switchable (its quantizers
    take a ``bit_widths`` set, ``Method.switchable``)."""
    if not get_method(method).switchable:
        raise LowbitError(
            f"method {method!r} cannot switch bit-widths; adaptive.bits needs one of: "
            f"{', '.join(methods_with('switchable'))}"
        )


def make_adaptive(
    model: nn.Module,
    bit_widths: Sequence[int],
    method: str = "coquant",
    first_last_bits: int | None = 8,
    overrides: Mapping[str, LayerSpec] | None = None,
    weight_options: Mapping[str, Any] | None = None,
    input_options: Mapping[str, Any] | None = None,
    float_downsample: bool = False,
    quantize_inputs: bool = True,
) -> nn.Module:
    """Quantize ``model`` in place so that it runs at every bit-width in ``bit_widths``.

    The first and last layers stay at ``first_last_bits`` (``None``: float) and layers named in
    ``overrides`` (as in ``quantize``, like ``float_downsample`` and ``quantize_inputs``) keep
    what they are given; all other layers switch. Every
    BatchNorm becomes a ``SwitchableBatchNorm``. The model is left at the highest bit-width and
    gets a ``set_bits(b)`` method (``lowbit.adaptive.set_bits`` bound to it).
    """
    widths = check_bit_widths(bit_widths)
    check_switchable_method(method)
    weight_options, input_options = dict(weight_options or {}), dict(input_options or {})
    names = [name for name, _ in quantizable_layers(model)]
    if not names:
        raise LowbitError(f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer to quantize")

    def fixed(value: LayerSpec) -> LayerSpec:
        # A layer kept at one bit-width gets the run's options without the bit-width set.
        if value is None:
            return None
        if not isinstance(value, Mapping):
            return {"bits": value, "weight_options": weight_options, "input_options": input_options}
        if value.get("method", method) != method:
            return value
        return {"weight_options": weight_options, "input_options": input_options, **value}

    plan = {names[0]: fixed(first_last_bits), names[-1]: fixed(first_last_bits)}
    plan.update({pattern: fixed(value) for pattern, value in (overrides or {}).items()})
    quantize(
        model,
        method,
        widths[0],
        first_last_bits,
        overrides=plan,
        weight_options={**weight_options, "bit_widths": widths},
        input_options={**input_options, "bit_widths": widths},
        float_downsample=float_downsample,
        quantize_inputs=quantize_inputs,
    )
    norms = [(name, m) for name, m in model.named_modules() if isinstance(m, BATCH_NORMS)]
    for name, norm in norms:
        set_submodule(model, name, SwitchableBatchNorm(norm, widths))
    model.set_bits = partial(set_bits, model)
    return set_bits(model, widths[0])


def expand_batchnorms(
    model: nn.Module, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` with each plain BatchNorm's tensors (``bn.weight``, a float or single-precision
    checkpoint) copied to every bit-width's BatchNorm of ``model`` (``bn.norms.8.weight`` ...),
    so that initializing an adaptive network from it keeps the normalization it learned."""
    expanded = dict(state)
    for name, module in model.named_modules():
        if not isinstance(module, SwitchableBatchNorm):
            continue
        prefix = f"{name}." if name else ""
        for key in module.active.state_dict():
            if prefix + key in state:
                for bits in module.norms:
                    expanded.setdefault(f"{prefix}norms.{bits}.{key}", state[prefix + key])
    return expanded
