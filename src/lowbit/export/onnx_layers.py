"""The deployed form of each quantized layer, as PyTorch modules the ONNX exporter traces.

``deployed_model`` copies a quantized model and replaces every QConv2d / QLinear by

* ``IntegerConv2d`` / ``IntegerLinear`` when its weight and its input are quantized onto
  grids whose levels are integers over a small divisor ``D`` (``integer_levels``) that fit
  8 bits: the input is rounded to its integer code ``n = D * level`` (``rounding``), the
  weight is stored as int8 / uint8 codes, ``ConvInteger`` / ``MatMulInteger`` accumulate the
  code products in int32 and one multiply per output channel applies
  ``alpha_w * alpha_x / (D_w * D_x)`` (APoT §2.2, Fig. 3), then the bias is added;
* a float layer otherwise (an input that is not quantized, such as the image into the APoT
  authors' 8-bit first layer, or codes wider than 8 bits, such as that layer's ``maxscale``
  codes -152..127): the on-grid weights in a plain Conv2d / Linear, after the input's own
  rounding when it is quantized.

The integer operators come from ``torch.autograd.Function``s with a ``symbolic`` method (the
TorchScript exporter, ``torch.onnx.export(..., dynamo=False)``): it emits exactly the nodes
written there, with the codes as initializers, which is simpler than rewriting a traced float
graph. Their ``forward`` computes the same integers in PyTorch (float64), so the deployed
model also runs, and checks, without onnxruntime. Inputs are rounded by
``lowbit.export.onnx_rounding``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.codes import encode
from lowbit.export.grids import grid_levels, integer_levels, quantizer_grid
from lowbit.export.onnx_rounding import rounding
from lowbit.export.runtime import InputQuantized
from lowbit.export.writer import quantized_layers
from lowbit.nn.quantize import set_submodule

# ONNX TensorProto data types (onnx.proto): the casts the integer operators need.
ONNX_FLOAT, ONNX_UINT8, ONNX_INT8 = 1, 2, 3
CODE_TYPES = ((torch.uint8, ONNX_UINT8, 0, 255), (torch.int8, ONNX_INT8, -128, 127))


def code_type(codes: torch.Tensor) -> tuple[torch.dtype, int] | None:
    """The 8-bit type (torch, ONNX) that holds every one of ``codes``; ``None`` if none does."""
    low, high = int(codes.min()), int(codes.max())
    for dtype, onnx_type, first, last in CODE_TYPES:
        if first <= low and high <= last:
            return dtype, onnx_type
    return None


def bits_needed(codes: torch.Tensor) -> int:
    """Bits of the narrowest (two's-complement when negative) integer holding ``codes``."""
    low, high = int(codes.min()), int(codes.max())
    return max(high.bit_length(), (-low - 1).bit_length()) + 1 if low < 0 else high.bit_length()


class _IntegerConv(torch.autograd.Function):
    """ConvInteger on int8 input codes and uint8 weight codes with zero points (``codes -
    input_zero`` times ``weight - weight_zero``: the same products as the codes themselves),
    int32 accumulation, then ``float(acc) * multiplier + bias`` per output channel.

    Why these types: onnxruntime 1.32's ConvInteger runs int8 inputs against uint8 weights on
    its fast int8 matrix kernels, and the other three type pairs several times slower (one
    64x64x3x3 convolution on 64x56x56, 2 threads: 35 ms, against 67 ms for uint8 x uint8,
    266-278 ms with int8 weights, and 52 ms for the float Conv)."""

    @staticmethod
    def forward(
        ctx, codes, weight, input_zero, weight_zero, multiplier, bias, stride, padding,
        dilation, groups,
    ):
        acc = F.conv2d(
            codes.double() - input_zero.double(), weight.double() - weight_zero.double(), None,
            stride, padding, dilation, groups,
        )
        return acc.float() * multiplier + bias  # exact integers in float64, as int32 would be

    @staticmethod
    def symbolic(
        g, codes, weight, input_zero, weight_zero, multiplier, bias, stride, padding, dilation,
        groups,
    ):
        acc = g.op(
            "ConvInteger", g.op("Cast", codes, to_i=ONNX_INT8), weight, input_zero, weight_zero,
            strides_i=stride, pads_i=list(padding) * 2, dilations_i=dilation, group_i=groups,
        )
        return g.op("Add", g.op("Mul", g.op("Cast", acc, to_i=ONNX_FLOAT), multiplier), bias)


class _IntegerMatMul(torch.autograd.Function):
    """MatMulInteger of 8-bit codes and the ``(in, out)`` weight codes, int32 accumulation,
    then ``float(acc) * multiplier + bias`` per output feature."""

    @staticmethod
    def forward(ctx, codes, weight, multiplier, bias, dtype):
        acc = codes.double() @ weight.double()
        return acc.float() * multiplier + bias

    @staticmethod
    def symbolic(g, codes, weight, multiplier, bias, dtype):
        acc = g.op("MatMulInteger", g.op("Cast", codes, to_i=dtype), weight)
        return g.op("Add", g.op("Mul", g.op("Cast", acc, to_i=ONNX_FLOAT), multiplier), bias)


class _IntegerLayer(nn.Module):
    """Input rounding to integer codes (``inputs``, cast to the ONNX type ``input_type``),
    8-bit weight codes, one rescale and one bias per output channel."""

    def __init__(
        self, inputs: nn.Module, input_type: int, weight: torch.Tensor, multiplier: torch.Tensor,
        bias: torch.Tensor,
    ) -> None:
        super().__init__()
        self.inputs, self.input_type = inputs, input_type
        self.register_buffer("weight", weight)
        self.register_buffer("multiplier", multiplier.float())
        self.register_buffer("bias", bias.detach().float())


class IntegerConv2d(_IntegerLayer):
    """A Conv2d computed by ``ConvInteger`` on codes (module docstring): input codes as int8
    (shifted by -128, zero point -128, when they need 0..255), weight codes as uint8 (shifted
    by +128, zero point 128, when they are signed); see ``_IntegerConv``."""

    def __init__(
        self, conv: nn.Conv2d, inputs: nn.Module, input_type: int, weight: torch.Tensor,
        multiplier: torch.Tensor, bias: torch.Tensor,
    ) -> None:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise LowbitError(
                f"ConvInteger pads with zeros by explicit amounts; a convolution with padding "
                f"{conv.padding!r} ({conv.padding_mode}) cannot be exported"
            )
        weight_zero = 128 if weight.dtype == torch.int8 else 0
        super().__init__(
            inputs, input_type, (weight.to(torch.int16) + weight_zero).to(torch.uint8),
            multiplier.view(1, -1, 1, 1), bias.view(1, -1, 1, 1),
        )
        input_zero = -128 if input_type == ONNX_UINT8 else 0
        self.register_buffer("input_zero", torch.tensor(input_zero, dtype=torch.int8))
        self.register_buffer("weight_zero", torch.tensor(weight_zero, dtype=torch.uint8))
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = self.inputs(x)
        if self.input_zero:
            codes = codes + float(self.input_zero)
        return _IntegerConv.apply(
            codes, self.weight, self.input_zero, self.weight_zero, self.multiplier, self.bias,
            self.stride, self.padding, self.dilation, self.groups,
        )


class IntegerLinear(_IntegerLayer):
    """A Linear computed by ``MatMulInteger`` on codes; the weight codes are stored
    ``(in, out)``, as MatMulInteger multiplies."""

    def __init__(
        self, linear: nn.Linear, inputs: nn.Module, input_type: int, weight: torch.Tensor,
        multiplier: torch.Tensor, bias: torch.Tensor,
    ) -> None:
        super().__init__(inputs, input_type, weight.t().contiguous(), multiplier, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _IntegerMatMul.apply(
            self.inputs(x), self.weight, self.multiplier, self.bias, self.input_type
        )


def _describe(codes: torch.Tensor, what: str) -> str:
    return f"{what} codes {int(codes.min())}..{int(codes.max())} need {bits_needed(codes)} bits"


@torch.no_grad()
def deployed_layer(layer: nn.Module) -> tuple[nn.Module, str | None]:
    """``(module, why_float)``: the integer form of a QConv2d / QLinear, or its float form and
    the reason it cannot be integer (``None`` when it is)."""
    weight = layer.weight.detach().float()
    weight_grid = input_grid = None
    if layer.weight_quantizer is not None:
        weight_grid = quantizer_grid(layer.weight_quantizer, weight)
    if layer.input_quantizer is not None:
        input_grid = quantizer_grid(layer.input_quantizer)
        if input_grid.scale.dim() != 0:
            raise LowbitError("per-channel input scales cannot be exported")
    reasons, integer = [], {}
    for grid, what in ((input_grid, "input"), (weight_grid, "weight")):
        found = None if grid is None else integer_levels(grid.spec)
        if grid is None:
            reasons.append(f"float {what}")
        elif found is None:
            reasons.append(f"{what} levels are not integers over a divisor up to 2**16")
        elif code_type(found[0]) is None:
            reasons.append(_describe(found[0], what))
        integer[what] = found
    on_grid = weight if weight_grid is None else layer.weight_quantizer(weight)
    if reasons:
        inputs = None if input_grid is None else rounding(input_grid)
        return _float_layer(layer, on_grid, inputs), "; ".join(reasons)
    (weight_codes, weight_divisor), (input_codes, input_divisor) = (
        integer["weight"], integer["input"]
    )
    levels = encode(on_grid, grid_levels(weight_grid.spec), weight_grid.scale)
    codes = weight_codes[levels].to(code_type(weight_codes)[0])
    multiplier = (
        weight_grid.scale.double() * input_grid.scale.double()
        / (weight_divisor * input_divisor)
    ).expand(weight.shape[0])
    bias = layer.bias if layer.bias is not None else torch.zeros(weight.shape[0])
    inputs = rounding(input_grid, integer["input"])
    input_type = code_type(input_codes)[1]
    if isinstance(layer, nn.Conv2d) and int(input_codes.max()) <= 127:
        input_type = ONNX_INT8  # unsigned codes that fit int8 need no shift (IntegerConv2d)
    kind = IntegerConv2d if isinstance(layer, nn.Conv2d) else IntegerLinear
    return kind(layer, inputs, input_type, codes, multiplier, bias), None


def _float_layer(layer: nn.Module, weight: torch.Tensor, inputs: nn.Module | None) -> nn.Module:
    """A plain Conv2d / Linear with ``layer``'s settings and bias and ``weight``, after
    ``inputs`` when the input is quantized."""
    bias = layer.bias is not None
    if isinstance(layer, nn.Conv2d):
        plain = nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
            layer.padding, layer.dilation, layer.groups, bias, layer.padding_mode, device="meta",
        )
    else:
        plain = nn.Linear(layer.in_features, layer.out_features, bias, device="meta")
    plain.weight = nn.Parameter(weight.clone(), requires_grad=False)
    if bias:
        plain.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
    return plain if inputs is None else InputQuantized(inputs, plain)


def deployed_model(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """A copy of a quantized ``model`` with every quantized layer in its deployed form, and
    the layers left float with the reason (``{name: reason}``)."""
    model = copy.deepcopy(model).eval()
    float_layers = {}
    for name, layer in quantized_layers(model):
        deployed, reason = deployed_layer(layer)
        set_submodule(model, name, deployed)
        if reason is not None:
            float_layers[name] = reason
    return model, float_layers
