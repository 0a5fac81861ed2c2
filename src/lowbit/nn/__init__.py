"""Quantized layers and the module swap that installs them."""

from lowbit.nn.layers import QConv2d, QLinear
from lowbit.nn.quantize import quantize

__all__ = ["QConv2d", "QLinear", "quantize"]
