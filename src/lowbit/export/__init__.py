"""Deployment: integer codes + scales written as safetensors and a manifest (``export_model``),
a plain-PyTorch runtime that rebuilds the network from them (``load_runtime``), and ONNX
graphs whose quantized layers run on integers (``lowbit.export.onnx.export_onnx``, run with
``lowbit.export.onnx_runtime.load_onnx``)."""

from lowbit.export.runtime import load_runtime
from lowbit.export.writer import export_model

__all__ = ["export_model", "load_runtime"]
