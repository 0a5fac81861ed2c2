"""``quantize()``: swap the Conv2d / Linear layers of any model for quantized ones."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Mapping
from typing import Any, Optional

from torch import nn

from lowbit.errors import LowbitError
from lowbit.nn.layers import QUANTIZED_LAYERS
from lowbit.quant.registry import Method, get_method

LayerBits = Optional[int]


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every plain Conv2d / Linear, in registration order."""
    found = []
    for name, module in model.named_modules():
        if type(module) in QUANTIZED_LAYERS:
            found.append((name, module))
        elif isinstance(module, tuple(QUANTIZED_LAYERS)) and type(module) not in (
            QUANTIZED_LAYERS.values()
        ):
            warnings.warn(
                f"{name} is a {type(module).__name__}, a subclass lowbit does not know how to "
                "quantize; it stays float",
                stacklevel=3,
            )
    return found


def layer_bits(
    names: list[str],
    bits: int,
    first_last_bits: LayerBits,
    overrides: Mapping[str, LayerBits] | None,
) -> dict[str, LayerBits]:
    """Bits of each layer: ``bits``, ``first_last_bits`` for the first and last, then the
    ``overrides`` patterns (fnmatch on module names, later patterns win; ``None`` = float)."""
    plan: dict[str, LayerBits] = {name: bits for name in names}
    if names:
        plan[names[0]] = plan[names[-1]] = first_last_bits
    for pattern, value in (overrides or {}).items():
        matched = fnmatch.filter(names, pattern)
        if not matched:
            raise LowbitError(
                f"override pattern {pattern!r} matches no Conv2d/Linear layer; "
                f"layers are: {', '.join(names)}"
            )
        for name in matched:
            plan[name] = value
    return plan


def quantize(
    model: nn.Module,
    method: str = "apot",
    bits: int = 4,
    first_last_bits: LayerBits = 8,
    overrides: Mapping[str, LayerBits] | None = None,
    weight_options: Mapping[str, Any] | None = None,
    input_options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Quantize ``model`` in place with ``method`` and return it.

    Every ``nn.Conv2d`` / ``nn.Linear`` becomes a ``QConv2d`` / ``QLinear`` sharing its
    parameters. The first and last of them (in registration order) get ``first_last_bits``
    (APoT and UniQ use 8; ``None`` keeps them float). ``overrides`` maps module-name patterns
    to bits or ``None``. The first layer's input is the data, which may be signed, so it is
    not quantized. ``weight_options`` / ``input_options`` go to the method's quantizers
    (e.g. ``{"alpha": 6.0}``).
    """
    spec = get_method(method)
    spec.check_bits(bits)
    if first_last_bits is not None:
        if isinstance(first_last_bits, int) and first_last_bits < 2:
            raise LowbitError(
                f"first_last_bits must be at least 2 (or None), got {first_last_bits}"
            )
        spec.check_bits(first_last_bits, "first_last_bits")
    layers = quantizable_layers(model)
    if not layers:
        raise LowbitError(
            f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer for lowbit to quantize"
        )
    names = [name for name, _ in layers]
    plan = layer_bits(names, bits, first_last_bits, overrides)
    for name, value in plan.items():
        if value is not None:
            spec.check_bits(value, f"bits of {name}")
    for index, (name, layer) in enumerate(layers):
        if plan[name] is None:
            continue
        quantized = _quantized_layer(
            spec,
            layer,
            plan[name],
            quantize_input=index > 0,
            weight_options=weight_options or {},
            input_options=input_options or {},
        )
        _set_submodule(model, name, quantized)
    return model


def _quantized_layer(
    spec: Method,
    layer: nn.Module,
    bits: int,
    quantize_input: bool,
    weight_options: Mapping[str, Any],
    input_options: Mapping[str, Any],
) -> nn.Module:
    weight_quantizer = spec.weight_quantizer(bits, **weight_options)
    input_quantizer = spec.input_quantizer(bits, **input_options) if quantize_input else None
    return QUANTIZED_LAYERS[type(layer)].from_float(layer, weight_quantizer, input_quantizer)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    if not name:
        raise LowbitError(
            "the model itself is a single Conv2d/Linear; wrap it in nn.Sequential to quantize it"
        )
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
