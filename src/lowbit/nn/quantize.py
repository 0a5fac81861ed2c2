"""``quantize()``: swap the Conv2d / Linear layers of any model for quantized ones."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

from torch import nn

from lowbit.errors import LowbitError
from lowbit.nn.layers import QUANTIZED_LAYERS
from lowbit.quant.registry import Method, get_method

LayerBits = Optional[int]
# What an override gives a layer: bits of the run's method, None (float), or a mapping
# {"method": ..., "bits": ..., "weight_options": ..., "input_options": ...} (any subset).
LayerSpec = Union[int, None, Mapping[str, Any]]
LAYER_SPEC_KEYS = ("method", "bits", "weight_options", "input_options")


@dataclass(frozen=True)
class LayerQuantization:
    """How one layer is quantized: its method, bits and quantizer options."""

    method: Method
    bits: int
    weight_options: Mapping[str, Any]
    input_options: Mapping[str, Any]


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
    bits: LayerBits,
    first_last_bits: LayerBits,
    overrides: Mapping[str, LayerSpec] | None,
) -> dict[str, LayerSpec]:
    """Bits of each layer: ``bits``, ``first_last_bits`` for the first and last, then the
    ``overrides`` patterns (fnmatch on module names, later patterns win; ``None`` = float)."""
    plan: dict[str, LayerSpec] = {name: bits for name in names}
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


def resolve_layer(
    name: str,
    spec: LayerSpec,
    method: Method,
    bits: LayerBits,
    weight_options: Mapping[str, Any],
    input_options: Mapping[str, Any],
) -> LayerQuantization | None:
    """What the plan entry ``spec`` of layer ``name`` means; ``None`` keeps the layer float.

    A mapping's missing keys come from the run (``method``, ``bits`` and, for the run's own
    method, its options); a layer given another method gets only the options it names.
    """
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        method.check_bits(spec, f"bits of {name}")
        return LayerQuantization(method, spec, weight_options, input_options)
    unknown = sorted(set(spec) - set(LAYER_SPEC_KEYS))
    if unknown:
        raise LowbitError(
            f"the override for {name} has unknown keys {', '.join(unknown)}; "
            f"use {', '.join(LAYER_SPEC_KEYS)}"
        )
    own = get_method(spec.get("method", method.name))
    chosen_bits = spec.get("bits", bits)
    if chosen_bits is None:
        raise LowbitError(f"the override for {name} needs bits (the run's bits are None)")
    own.check_bits(chosen_bits, f"bits of {name}")
    same = own.name == method.name
    return LayerQuantization(
        own,
        chosen_bits,
        spec.get("weight_options", weight_options if same else {}),
        spec.get("input_options", input_options if same else {}),
    )


def quantize(
    model: nn.Module,
    method: str = "apot",
    bits: LayerBits = 4,
    first_last_bits: LayerBits = 8,
    overrides: Mapping[str, LayerSpec] | None = None,
    weight_options: Mapping[str, Any] | None = None,
    input_options: Mapping[str, Any] | None = None,
    float_downsample: bool = False,
) -> nn.Module:
    """Quantize ``model`` in place with ``method`` and return it.

    Every ``nn.Conv2d`` / ``nn.Linear`` becomes a ``QConv2d`` / ``QLinear`` sharing its
    parameters. The first and last of them (in registration order) get ``first_last_bits``
    (APoT and UniQ use 8; ``None`` keeps them float); ``bits=None`` keeps the others float.
    ``overrides`` maps module-name patterns to bits, ``None``, or a mapping that may name
    another method and its options, e.g. ``{"fc": {"method": "maxscale", "bits": 8}}``
    (see ``resolve_layer``). The first layer's input is the data, which may be signed, so it
    is not quantized. ``weight_options`` / ``input_options`` go to the method's quantizers
    (e.g. ``{"alpha": 6.0}``). ``float_downsample=True`` keeps strided 1x1 convolutions (the
    downsampling shortcuts of residual networks) float, as binary networks do (UniQ §5).
    """
    spec = get_method(method)
    if bits is not None:
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
    plan = {
        name: resolve_layer(name, value, spec, bits, weight_options or {}, input_options or {})
        for name, value in layer_bits(names, bits, first_last_bits, overrides).items()
    }
    for index, (name, layer) in enumerate(layers):
        if plan[name] is None or float_downsample and is_downsample(layer):
            continue
        set_submodule(model, name, _quantized_layer(layer, plan[name], index > 0))
    return model


def is_downsample(layer: nn.Module) -> bool:
    """A strided 1x1 convolution: the projection shortcut of a residual block."""
    return (
        isinstance(layer, nn.Conv2d)
        and tuple(layer.kernel_size) == (1, 1)
        and max(layer.stride) > 1
    )


def _quantized_layer(
    layer: nn.Module, plan: LayerQuantization, quantize_input: bool
) -> nn.Module:
    weight_quantizer = plan.method.weight_quantizer(plan.bits, **plan.weight_options)
    input_factory = plan.method.input_quantizer if quantize_input else None
    input_quantizer = None if input_factory is None else input_factory(
        plan.bits, **plan.input_options
    )
    return QUANTIZED_LAYERS[type(layer)].from_float(layer, weight_quantizer, input_quantizer)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where the submodule ``name`` (a dotted name) of ``model`` is; the model
    itself (``name`` empty) cannot be replaced in place."""
    if not name:
        raise LowbitError(
            "the model itself is a single Conv2d/Linear; wrap it in nn.Sequential to quantize it"
        )
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
