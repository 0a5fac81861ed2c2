"""Deployment: integer codes + scales written as safetensors and a manifest (``export_model``),
a plain-PyTorch runtime that rebuilds the network from them (``load_runtime``), and ONNX
QuantizeLinear / DequantizeLinear graphs for uniform quantizers (``lowbit.export.onnx``)."""

from lowbit.export.runtime import load_runtime
from lowbit.export.writer import export_model

__all__ = ["export_model", "load_runtime"]
