"""Quantized layers: ``nn.Conv2d`` / ``nn.Linear`` that quantize what they hand to the kernel.

Each holds ``weight_quantizer`` and ``input_quantizer`` child modules (``None`` = float) and
changes nothing else, so state dicts keep the float layer's keys plus the quantizers'.

In evaluation (``eval()`` and no autograd: ``torch.no_grad()`` / ``torch.inference_mode()``)
a layer quantizes its weight once and reuses it for every batch until something it was
computed from changes: the weight or a quantizer tensor (in-place changes and
``load_state_dict`` bump their version counters; ``.to()`` moves them) or a quantizer's
plain settings (``bits``, ...). ``train()`` drops the stored weight. Writing through
``tensor.data`` bypasses version counters: call ``train()`` / ``eval()`` after doing so.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_SCALARS = (bool, int, float, str, type(None))


def _quantized(quantizer: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if quantizer is None else quantizer(x)


def _state_key(weight: torch.Tensor, quantizer: nn.Module) -> tuple[Any, ...]:
    """What the quantized weight depends on: every tensor's identity, storage and version,
    and the plain settings of the quantizer and its children."""
    tensors = (weight, *quantizer.parameters(), *quantizer.buffers())
    key: list[Any] = [id(quantizer)]
    key += [(id(t), t.data_ptr(), t.dtype, t.device, t._version) for t in tensors]
    for module in quantizer.modules():
        key += [(k, v) for k, v in vars(module).items() if _is_setting(v)]
    return tuple(key)


def _is_setting(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(isinstance(v, _SCALARS) for v in value)
    return isinstance(value, _SCALARS)


class _CachedWeight:
    """The weight quantization of QConv2d / QLinear, done once per evaluation."""

    weight: torch.Tensor
    weight_quantizer: nn.Module | None
    training: bool
    _weight_cache: tuple[tuple[Any, ...], torch.Tensor] | None = None

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the kernel gets it (see the module docstring for when it is reused)."""
        quantizer = self.weight_quantizer
        if quantizer is None:
            return self.weight
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            self._weight_cache = None
            return quantizer(self.weight)
        cache = self._weight_cache
        if cache is None or cache[0] != _state_key(self.weight, quantizer):
            weight = quantizer(self.weight)  # may set its own state (data-initialized steps)
            cache = self._weight_cache = (_state_key(self.weight, quantizer), weight)
        return cache[1]

    def train(self, mode: bool = True):
        self._weight_cache = None
        return super().train(mode)


class QConv2d(_CachedWeight, nn.Conv2d):
    """``nn.Conv2d`` whose weight and input pass through quantizers."""

    weight_quantizer: nn.Module | None
    input_quantizer: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.quantized_weight()
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


class QLinear(_CachedWeight, nn.Linear):
    """``nn.Linear`` whose weight and input pass through quantizers."""

    weight_quantizer: nn.Module | None
    input_quantizer: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.quantized_weight()
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
