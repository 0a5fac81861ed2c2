"""ONNX export of uniformly quantized models as QuantizeLinear / DequantizeLinear graphs.

Every quantized layer's weight is stored as 8-bit integer codes feeding DequantizeLinear (per
output channel when the scale is), and a quantized input becomes Clip -> QuantizeLinear ->
DequantizeLinear: clipping to the grid's end levels first makes the 8-bit ONNX range
reproduce any grid of up to 8 bits. UniQ's half-integer codes are shifted by half a step
around the pair. Only uniform grids map to QuantizeLinear; APoT / PoT levels do not (use
``lowbit export``).

ONNX rounds half to even; lowbit's RCF quantizers round ties up, so values exactly half-way
between two levels may differ. Needs the ``onnx`` package (``pip install 'lowbit[onnx]'``).
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.codes import broadcast_scale
from lowbit.export.grids import GridSpec, quantizer_grid
from lowbit.export.writer import quantized_layers
from lowbit.files import atomic_write
from lowbit.nn.quantize import set_submodule

OPSET = 13  # per-channel QuantizeLinear (axis) needs 13
RANGES = ((0, 255), (-128, 127))  # the integer ranges ONNX's 8-bit QuantizeLinear offers


def uniform_steps(spec: GridSpec, scale: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """``(step, first, count)`` of a uniform grid: its levels are ``step * (first + k)`` for
    ``k < count``; a clear error for non-uniform (APoT, PoT) grids."""
    if spec["levels"] == "integer":
        return scale / spec["divisor"], float(spec["first"]), int(spec["count"])
    if spec["levels"] != "uniform":
        raise LowbitError(
            f"ONNX QuantizeLinear needs uniform levels, not {spec['levels']}; export APoT / PoT "
            "models with lowbit export (integer codes + the deploy runtime)"
        )
    top = 2 ** (spec["bits"] - 1) - 1 if spec["signed"] else 2 ** spec["bits"] - 1
    first = -top if spec["signed"] else 0
    return scale / top, float(first), int(-first + top + 1)


class QuantizeDequantize(nn.Module):
    """``step * (shift + clamp(round(x / step - shift)))`` over a uniform grid, written with
    the ops the ONNX exporter turns into QuantizeLinear / DequantizeLinear."""

    def __init__(self, step: torch.Tensor, first: float, count: int, clip: bool) -> None:
        super().__init__()
        low = math.floor(first)
        high = low + count - 1
        fitting = [r for r in RANGES if r[0] <= low and high <= r[1]]
        if not fitting:
            raise LowbitError(f"a grid of codes {low}..{high} does not fit 8-bit QuantizeLinear")
        self.quant_min, self.quant_max = fitting[0]
        self.per_channel = step.dim() == 1
        self.clip = clip
        self.register_buffer("step", step.float())
        self.register_buffer("shift", (first - low) * step.float())
        self.register_buffer("zero_point", torch.zeros(step.shape, dtype=torch.int32))
        self.low, self.high = float(low), float(high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = broadcast_scale(self.shift, x.dim())
        shifted = bool(self.shift.any())
        if shifted:
            x = x - shift
        if self.clip:
            x = torch.clamp(x, self.low * float(self.step), self.high * float(self.step))
        if self.per_channel:
            x = torch.fake_quantize_per_channel_affine(
                x, self.step, self.zero_point, 0, self.quant_min, self.quant_max
            )
        else:
            x = torch.fake_quantize_per_tensor_affine(
                x, float(self.step), 0, self.quant_min, self.quant_max
            )
        return x + shift if shifted else x


class QDQLayer(nn.Module):
    """A Conv2d / Linear whose input and weight pass through ``QuantizeDequantize``."""

    def __init__(
        self, layer: nn.Module, weight: QuantizeDequantize, inputs: QuantizeDequantize | None
    ) -> None:
        super().__init__()
        self.layer, self.weight_qdq, self.input_qdq = layer, weight, inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_qdq is not None:
            x = self.input_qdq(x)
        weight = self.weight_qdq(self.layer.weight)
        if isinstance(self.layer, nn.Conv2d):
            return nn.Conv2d._conv_forward(self.layer, x, weight, self.layer.bias)
        return F.linear(x, weight, self.layer.bias)


@torch.no_grad()
def qdq_model(model: nn.Module) -> nn.Module:
    """A copy of a quantized lowbit model in which every quantized layer is a ``QDQLayer``
    holding its on-grid weights (what ``torch.onnx.export`` turns into a QDQ graph)."""
    model = copy.deepcopy(model).eval()
    for name, layer in quantized_layers(model):
        if layer.weight_quantizer is None:
            raise LowbitError(f"{name} quantizes its input only; ONNX export needs both")
        grid = quantizer_grid(layer.weight_quantizer, layer.weight.detach())
        layer.weight.copy_(layer.weight_quantizer(layer.weight))
        weight_qdq = QuantizeDequantize(*uniform_steps(grid.spec, grid.scale), clip=False)
        input_qdq = None
        if layer.input_quantizer is not None:
            grid = quantizer_grid(layer.input_quantizer)
            input_qdq = QuantizeDequantize(*uniform_steps(grid.spec, grid.scale), clip=True)
        layer.weight_quantizer = layer.input_quantizer = None
        set_submodule(model, name, QDQLayer(layer, weight_qdq, input_qdq))
    return model


def export_onnx(model: nn.Module, path: str | Path, sample: torch.Tensor) -> Path:
    """Write ``model`` (quantized with uniform grids: uniform, lsq, uniq) as an ONNX QDQ
    graph traced on ``sample`` (batch size free), atomically; returns ``path``."""
    path = Path(path)
    if path.is_dir():
        raise LowbitError(f"{str(path)!r} is a directory; give the .onnx file to write")
    exportable = qdq_model(model)  # first: a model ONNX cannot express fails with or without onnx
    try:
        import onnx
    except ImportError:
        raise LowbitError("ONNX export needs onnx: pip install 'lowbit[onnx]'") from None
    with atomic_write(path) as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        location = str(temporary)  # the exporter takes a str, not a Path, as a file location
        torch.onnx.export(
            exportable,
            (sample,),
            location,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        model_proto = onnx.load(location)
        fold_weight_quantization(model_proto.graph)
        onnx.save(model_proto, location)
    return path


def fold_weight_quantization(graph) -> None:
    """Replace every QuantizeLinear of a constant (a weight) by its integer result, stored as
    an int8 / uint8 initializer: weights then take one byte each and feed DequantizeLinear
    directly, as in a deployed QDQ model. Rounding as QuantizeLinear: half to even."""
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}

    def constant(name: str) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer or a Constant (through Identity)."""
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producers.get(name)
        if node is not None and node.op_type == "Identity":
            return constant(node.input[0])
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    for node in list(graph.node):
        if node.op_type != "QuantizeLinear":
            continue
        weight, scale, zero_point = (constant(name) for name in node.input[:3])
        if weight is None or scale is None or zero_point is None:
            continue  # an activation: quantized at run time
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1:
            shape = [1] * weight.ndim
            shape[axis] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        info = np.iinfo(zero_point.dtype)
        codes = np.clip(np.rint(weight / scale) + zero_point, info.min, info.max)
        graph.initializer.append(
            numpy_helper.from_array(codes.astype(zero_point.dtype), node.output[0])
        )
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    used |= {value.name for value in list(graph.input) + list(graph.output)}
    for tensor in list(graph.initializer):
        if tensor.name not in used:  # the float weights just replaced
            graph.initializer.remove(tensor)
