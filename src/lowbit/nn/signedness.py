"""Which layer inputs can be negative: read from the model's graph (``torch.fx``).

An unsigned activation quantizer maps every negative input to zero, so it suits only a layer
whose input comes out of a ReLU (or ReLU6, a clamp at zero, a sigmoid, a softmax), possibly
through ops that keep signs (pooling, flattening, dropout, concatenation or sums of such
tensors). Everything else (the data, a linear bottleneck, a LayerNorm, a residual sum with a
signed branch, GELU) gets a signed quantizer. A module that ``torch.fx`` cannot trace (data-
dependent Python) is read through its children, so only the layers whose input no traced graph
shows are left unknown, and the caller treats those inputs as signed.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

# Modules and functions whose output is never negative, whatever their input.
NON_NEGATIVE_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softmax, nn.Softplus)
NON_NEGATIVE_FUNCTIONS = {
    F.relu, F.relu6, torch.relu, torch.relu_, F.sigmoid, torch.sigmoid, F.hardsigmoid,
    F.softmax, torch.softmax, F.softplus, torch.abs, torch.exp, torch.square,
}
NON_NEGATIVE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "softmax", "abs", "abs_", "exp"}
# Ops whose output is non-negative when every tensor they take is: they move, select, pool,
# add or multiply values without changing signs.
SIGN_KEEPING_MODULES = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Flatten, nn.Unflatten,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.PixelShuffle, nn.ZeroPad2d,
)
SIGN_KEEPING_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.cat, torch.concat, torch.stack, torch.transpose,
    torch.permute, torch.squeeze, torch.unsqueeze, torch.add, torch.mul, torch.mean, torch.sum,
    torch.max, torch.amax, torch.maximum, torch.minimum,
    F.dropout, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
    F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool2d, F.interpolate, operator.add, operator.iadd, operator.mul,
    operator.imul, operator.getitem, operator.truediv,
}
SIGN_KEEPING_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
    "mean", "sum", "max", "amax", "add", "add_", "mul", "mul_", "expand", "repeat", "clone",
    "to", "float", "type_as", "chunk", "split", "__getitem__",
}


# Of those, the arithmetic ones keep signs only with non-negative constants (x + 1, not x - 1).
ARITHMETIC = {
    torch.add, torch.mul, operator.add, operator.iadd, operator.mul, operator.imul,
    operator.truediv, "add", "add_", "mul", "mul_",
}


class _LeafTracer(fx.Tracer):
    """Traces into the modules that hold layers to be quantized (``containers``, by name) and
    keeps every other module, the layers themselves included, as a single node."""

    def __init__(self, containers: set[str]) -> None:
        super().__init__()
        self.containers = containers

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name not in self.containers


def _feed_forward_after_activation(layer: nn.Module) -> dict[str, bool]:
    # torch's Transformer layers: linear2 reads activation(linear1(x)) through dropout.
    activation = getattr(layer, "activation", None)
    return {"linear2": activation is F.relu or isinstance(activation, nn.ReLU)}


# What is known of modules whose forward torch.fx cannot trace (data-dependent checks of their
# fused paths): which of their layers read a non-negative input, by relative name.
KNOWN_INSIDES = {
    nn.TransformerEncoderLayer: _feed_forward_after_activation,
    nn.TransformerDecoderLayer: _feed_forward_after_activation,
}


def non_negative_inputs(model: nn.Module, names: Iterable[str]) -> dict[str, bool]:
    """For each layer name, whether its input is provably non-negative. The model's graph is
    read with ``torch.fx``; a module that cannot be traced is read through its children (and
    ``KNOWN_INSIDES``), and what no graph shows counts as possibly negative. A layer called
    more than once is non-negative only if every call's input is."""
    names = set(names)
    found: dict[str, bool] = {}
    _read(model, "", names, found)
    return {name: found.get(name, False) for name in names}


def _read(module: nn.Module, prefix: str, names: set[str], found: dict[str, bool]) -> None:
    """Fill ``found`` for the layers inside ``module`` (named ``prefix...`` in the model).

    Children that cannot be traced on their own become single nodes of this module's graph
    (their outputs of unknown sign) and are read separately, so one block with data-dependent
    Python hides only what is inside it."""
    inside = {name[len(prefix):] for name in names if name.startswith(prefix)}
    containers = _containers(module, inside)
    graph = _trace(module, containers)
    opaque = set()
    if graph is None:
        opaque = {
            name for name, child in module.named_children()
            if name in containers
            and _trace(child, _containers(child, _below(name, inside))) is None
        }
        kept = {c for c in containers if not any(c == o or c.startswith(o + ".") for o in opaque)}
        graph = _trace(module, kept) if opaque else None
    if graph is None:
        rule = KNOWN_INSIDES.get(type(module))
        if rule is not None:
            found.update({prefix + name: value for name, value in rule(module).items()})
        opaque = {name for name, _ in module.named_children() if name in containers}
    else:
        _walk(graph, dict(module.named_modules()), prefix, inside, found)
    for name in opaque:
        _read(module.get_submodule(name), f"{prefix}{name}.", names, found)


def _below(child: str, inside: set[str]) -> set[str]:
    return {name[len(child) + 1:] for name in inside if name.startswith(child + ".")}


def _containers(module: nn.Module, inside: set[str]) -> set[str]:
    """The module itself and every submodule that holds one of the layers ``inside``."""
    return {""} | {
        child for child, _ in module.named_modules()
        if child and any(name.startswith(child + ".") for name in inside)
    }


def _trace(module: nn.Module, containers: set[str]) -> fx.Graph | None:
    try:
        return _LeafTracer(containers).trace(module)
    except Exception:  # noqa: BLE001 - any tracing failure means "read it another way"
        return None


def _walk(
    graph: fx.Graph, modules: dict, prefix: str, inside: set[str], found: dict[str, bool]
) -> None:
    known: dict[fx.Node, bool] = {}
    for node in graph.nodes:
        known[node] = _non_negative(node, known, modules)
        if node.op == "call_module" and node.target in inside:
            source = node.args[0] if node.args else None
            value = isinstance(source, fx.Node) and known.get(source, False)
            name = prefix + node.target
            found[name] = found.get(name, True) and value


def _non_negative(node: fx.Node, known: dict[fx.Node, bool], modules: dict) -> bool:
    def inputs_non_negative() -> bool:
        tensors = node.all_input_nodes
        if node.target in ARITHMETIC:
            values = (*node.args, *node.kwargs.values())
            constants = [a for a in values if not isinstance(a, fx.Node)]
            if any(not isinstance(c, (int, float)) or c < 0 for c in constants):
                return False
        return bool(tensors) and all(known.get(arg, False) for arg in tensors)

    if node.op == "call_module":
        module = modules.get(node.target)
        if isinstance(module, NON_NEGATIVE_MODULES):
            return True
        if isinstance(module, nn.Hardtanh):
            return module.min_val >= 0 or inputs_non_negative()
        return isinstance(module, SIGN_KEEPING_MODULES) and inputs_non_negative()
    if node.op == "call_function":
        if node.target in NON_NEGATIVE_FUNCTIONS:
            return True
        if node.target in (torch.clamp, torch.clip, F.hardtanh, torch.clamp_min):
            return _lower_bound(node) >= 0 or inputs_non_negative()
        return node.target in SIGN_KEEPING_FUNCTIONS and inputs_non_negative()
    if node.op == "call_method":
        if node.target in NON_NEGATIVE_METHODS:
            return True
        if node.target in ("clamp", "clamp_", "clip", "clamp_min", "clamp_min_"):
            return _lower_bound(node) >= 0 or inputs_non_negative()
        return node.target in SIGN_KEEPING_METHODS and inputs_non_negative()
    return False


def _lower_bound(node: fx.Node) -> float:
    """The constant lower bound of a clamp / hardtanh node (-inf when absent or a tensor)."""
    args = list(node.args[1:])
    bound = node.kwargs.get("min", node.kwargs.get("min_val", args[0] if args else None))
    if node.target in (torch.clamp_min, "clamp_min", "clamp_min_") and args:
        bound = args[0]
    if bound is None and node.target is F.hardtanh:
        bound = -1.0  # hardtanh's default min_val
    return float(bound) if isinstance(bound, (int, float)) else float("-inf")
