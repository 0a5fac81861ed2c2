"""Quantized layers: convolutions and ``nn.Linear`` that quantize what they hand to the kernel.

Each holds ``weight_quantizer`` and ``input_quantizer`` child modules (``None`` = float) and
changes nothing else, so state dicts keep the float layer's keys plus the quantizers'.
``QUANTIZED_LAYERS`` maps each float type to its quantized type.

A weight quantizer always sees a tensor whose dim 0 is the output channel, so per-channel
quantizers (UniQ kernel-wise, LSQ ``per_channel``) get one step per output channel. Conv and
Linear weights are laid out that way already. ConvTranspose weights are
``(in_channels, out_channels / groups, *kernel)``: the transposed layers hand the quantizer
the weight in Conv layout ``(out_channels, in_channels / groups, *kernel)`` and put the
result back (``quantizer_layout``, ``_swap_channels``). ``from_float`` tells the weight
quantizer that shape once (``allocate``, ``lowbit.quant.hooks.WeightSized``), so per-channel
steps have their final shape before an optimizer or DistributedDataParallel sees them.

In evaluation (``eval()`` and no autograd: ``torch.no_grad()`` / ``torch.inference_mode()``)
a layer quantizes its weight once and reuses it for every batch until something it was
computed from changes: the weight or a quantizer tensor (in-place changes and
``load_state_dict`` bump their version counters; ``.to()`` moves them) or a quantizer's
plain settings (``bits``, ...). ``train()`` drops the stored weight. Writing through
``tensor.data`` bypasses version counters: call ``train()`` / ``eval()`` after doing so.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.quant.hooks import WeightSized

_SCALARS = (bool, int, float, str, type(None))
_Conv = TypeVar("_Conv", bound="_QConvNd")


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
    """The weight quantization of a quantized layer, done once per evaluation."""

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
            return self._quantize_weight(quantizer)
        cache = self._weight_cache
        if cache is None or cache[0] != _state_key(self.weight, quantizer):
            weight = self._quantize_weight(quantizer)  # may set its own state (data-init steps)
            cache = self._weight_cache = (_state_key(self.weight, quantizer), weight)
        return cache[1]

    def quantizer_layout(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` in the layout the weight quantizer sees (dim 0 = output channel), and
        back: the map is its own inverse. The identity except for transposed convolutions.
        Code that calls ``layer.weight_quantizer`` itself (export, analysis) goes through it:
        ``layer.quantizer_layout(quantizer(layer.quantizer_layout(layer.weight)))``."""
        return weight

    def _quantize_weight(self, quantizer: nn.Module) -> torch.Tensor:
        return self.quantizer_layout(quantizer(self.quantizer_layout(self.weight)))

    def train(self, mode: bool = True):
        self._weight_cache = None
        return super().train(mode)


class _QConvNd(_CachedWeight):
    """What every quantized convolution shares: the cached weight and ``from_float``."""

    weight_quantizer: nn.Module | None
    input_quantizer: nn.Module | None

    @classmethod
    def from_float(
        cls: type[_Conv],
        conv: nn.modules.conv._ConvNd,
        weight_quantizer: nn.Module | None,
        input_quantizer: nn.Module | None,
    ) -> _Conv:
        """A layer of this class, built with ``conv``'s constructor arguments, that shares
        ``conv``'s parameters (no copy)."""
        arguments: dict[str, Any] = {
            "stride": conv.stride,
            "padding": conv.padding,  # a string ("same", "valid") stays one
            "dilation": conv.dilation,
            "groups": conv.groups,
            "bias": conv.bias is not None,
            "padding_mode": conv.padding_mode,
        }
        if conv.transposed:
            arguments["output_padding"] = conv.output_padding
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, **arguments, device="meta"
        )
        return _adopt(q, conv, weight_quantizer, input_quantizer)


class _QConv(_QConvNd):
    """A convolution: ``nn.ConvNd._conv_forward`` with the quantized input and weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.quantized_weight()
        return self._conv_forward(_quantized(self.input_quantizer, x), weight, self.bias)


_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class _QConvTranspose(_QConvNd):
    """A transposed convolution; its weight quantizer sees the Conv layout (module docstring).

    With ``groups > 1`` that layout is not ``weight.transpose(0, 1)`` (whose dim 0 would be
    ``out_channels / groups`` long, one entry shared by an output channel of every group) but
    the grouped permutation of ``_swap_channels``, so a per-channel quantizer still has one step
    per output channel, in output-channel order. With ``groups == 1`` the two are the same
    view. Anything that reads a per-channel quantizer's steps reads them in that order.
    """

    def forward(
        self, x: torch.Tensor, output_size: list[int] | None = None
    ) -> torch.Tensor:
        dims = len(self.kernel_size)
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, dims, self.dilation
        )
        weight = self.quantized_weight()
        return _CONV_TRANSPOSE[dims](
            _quantized(self.input_quantizer, x), weight, self.bias, self.stride,
            self.padding, output_padding, self.groups, self.dilation,
        )

    def quantizer_layout(self, weight: torch.Tensor) -> torch.Tensor:
        return _swap_channels(weight, self.groups)


def _swap_channels(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A ConvTranspose weight ``(in, out / groups, *k)`` in Conv layout ``(out, in / groups,
    *k)``, and back: the map is its own inverse.

    Group ``g`` maps input channels ``g * in/groups ...`` to output channels
    ``g * out/groups + j``, whose weights are ``weight[g * in/groups : (g+1) * in/groups, j]``:
    split dim 0 into the groups, swap the two channel dims within each group, merge again.
    ``groups == 1`` gives the view ``weight.transpose(0, 1)`` (no copy).
    """
    rows, columns, *kernel = weight.shape
    per_group = rows // groups
    grouped = weight.reshape(groups, per_group, columns, *kernel).transpose(1, 2)
    return grouped.reshape(groups * columns, per_group, *kernel)


class QConv1d(_QConv, nn.Conv1d):
    """``nn.Conv1d`` whose weight and input pass through quantizers."""


class QConv2d(_QConv, nn.Conv2d):
    """``nn.Conv2d`` whose weight and input pass through quantizers."""


class QConv3d(_QConv, nn.Conv3d):
    """``nn.Conv3d`` whose weight and input pass through quantizers."""


class QConvTranspose1d(_QConvTranspose, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` whose weight and input pass through quantizers."""


class QConvTranspose2d(_QConvTranspose, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose weight and input pass through quantizers."""


class QConvTranspose3d(_QConvTranspose, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` whose weight and input pass through quantizers."""


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
    if weight_quantizer is not None:
        # Per-channel parameters get their final shape now, before any optimizer or DDP.
        shape = q.quantizer_layout(torch.empty(q.weight.shape, device="meta")).shape
        for module in weight_quantizer.modules():
            if isinstance(module, WeightSized):
                module.allocate(shape)
    device = float_layer.weight.device
    for quantizer in (weight_quantizer, input_quantizer):
        if quantizer is not None:
            quantizer.to(device)
    q.train(float_layer.training)
    return q


QUANTIZED_LAYERS: dict[type, type] = {
    nn.Conv1d: QConv1d,
    nn.Conv2d: QConv2d,
    nn.Conv3d: QConv3d,
    nn.ConvTranspose1d: QConvTranspose1d,
    nn.ConvTranspose2d: QConvTranspose2d,
    nn.ConvTranspose3d: QConvTranspose3d,
    nn.Linear: QLinear,
}
# Every quantized layer type, for isinstance checks.
QUANTIZED_TYPES = tuple(QUANTIZED_LAYERS.values())
