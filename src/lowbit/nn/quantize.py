"""``quantize()``: swap the convolutions and linear layers of any model for quantized ones."""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Optional, Union

from torch import nn

from lowbit.errors import LowbitError
from lowbit.nn.attention import replace_attention
from lowbit.nn.layers import QUANTIZED_LAYERS, QUANTIZED_TYPES
from lowbit.nn.signedness import non_negative_inputs
from lowbit.quant.registry import Method, get_method

logger = logging.getLogger(__name__)

LayerBits = Optional[int]
# What an override gives a layer: bits of the run's method, None (float), or a mapping
# {"method": ..., "bits": ..., "weight_bits": ..., "input_bits": ..., "weight_options": ...,
# "input_options": ..., "signed_input": ...} (any subset).
LayerSpec = Union[int, None, Mapping[str, Any]]
LAYER_SPEC_KEYS = (
    "method", "bits", "weight_bits", "input_bits", "weight_options", "input_options",
    "signed_input",
)
# Layers with weights that no method quantizes, by design (normalization layers stay float in
# every paper); anything else with parameters that stays float is listed in a warning.
FLOAT_BY_DESIGN = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class LayerQuantization:
    """How one layer is quantized: its method, the bits of its weights and of its input
    (``input_bits=None``: float input), quantizer options and whether its input quantizer is
    signed (``None``: decided from the model's graph)."""

    method: Method
    weight_bits: int
    input_bits: int | None
    weight_options: Mapping[str, Any]
    input_options: Mapping[str, Any]
    signed_input: bool | None = None


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer of a type in ``QUANTIZED_LAYERS`` (convolutions,
    transposed convolutions, linear layers), in registration order."""
    return [
        (name, module) for name, module in model.named_modules()
        if type(module) in QUANTIZED_LAYERS
    ]


def float_layers(model: nn.Module) -> list[str]:
    """Modules holding weights of their own that are neither quantizable layers (quantized, or
    float by the plan), their quantizers, nor normalization layers: what ``quantize`` cannot
    quantize, described by name and type."""
    skipped, found = set(), []
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZED_TYPES):
            skipped.update(f"{name}.{n}".strip(".") for n, _ in module.named_modules())
        if name in skipped or type(module) in QUANTIZED_LAYERS:
            continue
        if isinstance(module, FLOAT_BY_DESIGN):
            continue
        if any(p is not None for p in module._parameters.values()):
            found.append(f"{name or '(model)'} ({type(module).__name__})")
            skipped.update(f"{name}.{n}".strip(".") for n, _ in module.named_modules())
    return found


def layer_bits(
    names: list[str],
    bits: LayerBits,
    first_last_bits: LayerBits,
    overrides: Mapping[str, LayerSpec] | None,
    first_last_method: str | None = None,
) -> dict[str, LayerSpec]:
    """Bits of each layer: ``bits``, ``first_last_bits`` for the first and last (with
    ``first_last_method`` when the run's method gives them another one), then the
    ``overrides`` patterns (fnmatch on module names, later patterns win; ``None`` = float)."""
    plan: dict[str, LayerSpec] = {name: bits for name in names}
    if names:
        edge: LayerSpec = first_last_bits
        if first_last_method is not None and first_last_bits is not None:
            edge = {"method": first_last_method, "bits": first_last_bits}
        plan[names[0]] = plan[names[-1]] = edge
    for pattern, value in (overrides or {}).items():
        matched = fnmatch.filter(names, pattern)
        if not matched:
            raise LowbitError(
                f"override pattern {pattern!r} matches no quantizable layer; "
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
    ``weight_bits`` / ``input_bits`` set the two sides apart (default: ``bits``), e.g. a
    layer's learned weight bits at the run's activation bits (SRQ Table 3, "Fixed");
    ``input_bits: null`` leaves the layer's input float.
    """
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        method.check_bits(spec, f"bits of {name}")
        return LayerQuantization(method, spec, spec, weight_options, input_options)
    unknown = sorted(set(spec) - set(LAYER_SPEC_KEYS))
    if unknown:
        raise LowbitError(
            f"the override for {name} has unknown keys {', '.join(unknown)}; "
            f"use {', '.join(LAYER_SPEC_KEYS)}"
        )
    own = get_method(spec.get("method", method.name))
    chosen_bits = spec.get("bits", bits)
    weight_bits = spec.get("weight_bits", chosen_bits)
    input_bits = spec.get("input_bits", chosen_bits)
    if weight_bits is None:
        raise LowbitError(f"the override for {name} needs bits (the run's bits are None)")
    own.check_bits(weight_bits, f"weight bits of {name}")
    if input_bits is not None:
        own.check_bits(input_bits, f"input bits of {name}")
    signed = spec.get("signed_input")
    if signed not in (None, True, False):
        raise LowbitError(
            f"signed_input of {name} must be true, false or null (auto), got {signed!r}"
        )
    same = own.name == method.name
    return LayerQuantization(
        own,
        weight_bits,
        input_bits,
        spec.get("weight_options", weight_options if same else {}),
        spec.get("input_options", input_options if same else {}),
        signed,
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
    signed_inputs: bool | None = None,
    quantize_inputs: bool = True,
) -> nn.Module:
    """Quantize ``model`` in place with ``method`` and return it.

    Every convolution (1-3 d, transposed too) and linear layer becomes its quantized twin
    sharing its parameters; every ``nn.MultiheadAttention`` first becomes a
    ``QuantizableAttention`` whose four projections are linear layers like any other. The first
    and last layers (in registration order) get ``first_last_bits`` with their paper's
    treatment (APoT family: 8-bit weights at steps of max(W), inputs float; ``None`` keeps them
    float); ``bits=None`` keeps the others float. ``overrides`` maps module-name patterns to
    bits, ``None``, or a mapping that may name another method, its options and
    ``signed_input``, e.g. ``{"fc": {"method": "maxscale", "bits": 8}}`` (``resolve_layer``).
    The first layer's input is the data, which may be signed, so it is not quantized.
    ``weight_options`` / ``input_options`` go to the method's quantizers (e.g.
    ``{"alpha": 6.0}``). ``float_downsample=True`` keeps strided 1x1 convolutions (the
    downsampling shortcuts of residual networks) float, as binary networks do (UniQ §5).
    ``quantize_inputs=False`` quantizes weights only, every layer input stays float (APoT
    App. B Table 4: "full precision for activations"), whatever the method.

    Input quantizers are unsigned where the layer's input is provably non-negative (a ReLU,
    ReLU6, clamp at 0, sigmoid or softmax before it, read from the ``torch.fx`` graph) and
    signed elsewhere, or everywhere when the model cannot be traced; ``signed_inputs``
    True / False forces one kind on every layer, and an override's ``signed_input`` on one.
    The layers given signed inputs, and any layer with weights left float, are reported once.
    Each quantizer built records its method's name (``quantizer.lowbit_method``) so that what
    the registry declares about the method (``Method.export_grid``) can be asked of it; a
    weight quantizer gets its per-channel parameters when its layer is built
    (``lowbit.nn.layers``).
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
    if signed_inputs not in (None, True, False):
        raise LowbitError(
            f"signed_inputs must be true, false or null (auto), got {signed_inputs!r}"
        )
    replace_attention(model)
    layers = quantizable_layers(model)
    if not layers:
        raise LowbitError(
            f"{type(model).__name__} has no convolution or linear layer for lowbit to quantize"
        )
    names = [name for name, _ in layers]
    edge_method = spec.first_last_method
    plan = {
        name: resolve_layer(name, value, spec, bits, weight_options or {}, input_options or {})
        for name, value in layer_bits(names, bits, first_last_bits, overrides, edge_method).items()
    }
    plan = _decide_signedness(model, plan, signed_inputs)
    signed, kept_float = [], []
    for index, (name, layer) in enumerate(layers):
        if plan[name] is None or float_downsample and is_downsample(layer):
            kept_float.append(name)
            continue
        quantize_input = (
            quantize_inputs and index > 0 and plan[name].method.input_quantizer is not None
            and plan[name].input_bits is not None
        )
        if quantize_input and plan[name].signed_input:
            signed.append(name)
        set_submodule(model, name, _quantized_layer(name, layer, plan[name], quantize_input))
    _report(model, signed, kept_float)
    return model


def _decide_signedness(
    model: nn.Module, plan: dict[str, LayerQuantization | None], signed_inputs: bool | None
) -> dict[str, LayerQuantization | None]:
    """Fill in ``signed_input`` where the plan leaves it to lowbit."""
    undecided = [n for n, p in plan.items() if p is not None and p.signed_input is None]
    if not undecided:
        return plan
    known = {} if signed_inputs is not None else non_negative_inputs(model, undecided)
    decided = dict(plan)
    for name in undecided:
        signed = signed_inputs if signed_inputs is not None else not known[name]
        decided[name] = replace(plan[name], signed_input=signed)
    return decided


def _report(model: nn.Module, signed: list[str], kept_float: list[str]) -> None:
    if kept_float:
        logger.info("lowbit: layers kept float by the plan: %s", ", ".join(kept_float))
    if signed:
        logger.info("lowbit: signed input quantizers (inputs can be negative): %s",
                    ", ".join(signed))
    unquantized = float_layers(model)
    if unquantized:
        warnings.warn(
            "lowbit cannot quantize these layers with weights; they stay float: "
            + ", ".join(unquantized),
            stacklevel=3,
        )


def is_downsample(layer: nn.Module) -> bool:
    """A strided 1x1 convolution: the projection shortcut of a residual block."""
    return (
        isinstance(layer, nn.Conv2d)
        and tuple(layer.kernel_size) == (1, 1)
        and max(layer.stride) > 1
    )


def _quantized_layer(
    name: str, layer: nn.Module, plan: LayerQuantization, quantize_input: bool
) -> nn.Module:
    method = plan.method
    weight_quantizer = _build(method, method.weight_quantizer, plan.weight_bits,
                              plan.weight_options,
                              f"weight_options of layer {name} (method {method.name})")
    input_quantizer = None
    if quantize_input and method.input_quantizer is not None:
        options = {"signed": bool(plan.signed_input), **plan.input_options}
        input_quantizer = _build(method, method.input_quantizer, plan.input_bits, options,
                                 f"input_options of layer {name} (method {method.name})")
    return QUANTIZED_LAYERS[type(layer)].from_float(layer, weight_quantizer, input_quantizer)


def _build(method: Method, factory, bits: int, options: Mapping[str, Any], what: str) -> nn.Module:
    """``factory(bits, **options)``, tagged with the name of the ``method`` that built it
    (``lowbit_method``: what the registry says it can do, e.g. ``Method.export_grid``); an
    option the factory does not take is a user error."""
    try:
        quantizer = factory(bits, **options)
    except (TypeError, LowbitError) as error:  # a misspelt option name, a value out of range
        raise LowbitError(f"{what}: {error}") from None
    quantizer.lowbit_method = method.name
    return quantizer


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
