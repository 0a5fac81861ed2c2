"""Quantized layers: ``nn.Conv2d`` / ``nn.Linear`` that quantize what they hand to the kernel.

Each holds ``weight_quantizer`` and ``input_quantizer`` child modules (``None`` = float) and
changes nothing else, so state dicts keep the float layer's keys plus the quantizers'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _quantized(quantizer: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if quantizer is None else quantizer(x)


class QConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight and input pass through quantizers."""

    weight_quantizer: nn.Module | None
    input_quantizer: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _quantized(self.weight_quantizer, self.weight)
        return self._conv_forward(_quantized(self.input_quantizer, x), weight, self.bias)

    @classmethod
    def from_float(
        cls,
        conv: nn.Conv2d,
        weight_quantizer: nn.Module | None,
        input_quantizer: nn.Module | None,
    ) -> QConv2d:
        """A QConv2d that shares ``conv``'s parameters (no copy)."""
        q = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        return _adopt(q, conv, weight_quantizer, input_quantizer)


class QLinear(nn.Linear):
    """``nn.Linear`` whose weight and input pass through quantizers."""

    weight_quantizer: nn.Module | None
    input_quantizer: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _quantized(self.weight_quantizer, self.weight)
        return F.linear(_quantized(self.input_quantizer, x), weight, self.bias)

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        weight_quantizer: nn.Module | None,
        input_quantizer: nn.Module | None,
    ) -> QLinear:
        """A QLinear that shares ``linear``'s parameters (no copy)."""
        q = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta"
        )
        return _adopt(q, linear, weight_quantizer, input_quantizer)


def _adopt(q, float_layer, weight_quantizer, input_quantizer):
    q.weight = float_layer.weight
    q.bias = float_layer.bias
    q.weight_quantizer = weight_quantizer
    q.input_quantizer = input_quantizer
    device = float_layer.weight.device
    for quantizer in (weight_quantizer, input_quantizer):
        if quantizer is not None:
            quantizer.to(device)
    q.train(float_layer.training)
    return q


QUANTIZED_LAYERS: dict[type, type] = {nn.Conv2d: QConv2d, nn.Linear: QLinear}
