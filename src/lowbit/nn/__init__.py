"""Quantized layers, the attention module with separate projections, and the module swap that
installs them."""

from lowbit.nn.attention import QuantizableAttention, replace_attention
from lowbit.nn.layers import (
    QConv1d,
    QConv2d,
    QConv3d,
    QConvTranspose1d,
    QConvTranspose2d,
    QConvTranspose3d,
    QLinear,
)
from lowbit.nn.quantize import quantize

__all__ = [
    "QConv1d",
    "QConv2d",
    "QConv3d",
    "QConvTranspose1d",
    "QConvTranspose2d",
    "QConvTranspose3d",
    "QLinear",
    "QuantizableAttention",
    "quantize",
    "replace_attention",
]
