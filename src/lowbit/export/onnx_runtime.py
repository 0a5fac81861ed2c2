"""Running an exported ONNX model on onnxruntime's CPU provider (``load_onnx``).

The model is wrapped as an ``nn.Module`` taking and returning CPU tensors, so the evaluation
loop that tests checkpoints (``lowbit.train.loop.evaluate``) tests the deployed model too.
Needs onnxruntime (``pip install 'lowbit[onnx]'``); the onnx package is not needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import LowbitError

DEFAULT_THREADS = 2  # intra-op threads: the CI machine's cores
PREFIX = "lowbit."  # of the metadata_props keys lowbit writes


class OnnxModel(nn.Module):
    """An onnxruntime session as a module: ``model(images) -> logits`` (float32, CPU);
    ``metadata`` holds the ``lowbit.*`` metadata of the file (``decode_metadata``)."""

    def __init__(self, session: Any, metadata: dict[str, Any]) -> None:
        super().__init__()
        self.session, self.metadata = session, metadata
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = {self.input_name: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        (logits,) = self.session.run(None, inputs)
        return torch.from_numpy(logits)


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxModel:
    """The ONNX model at ``path`` in an onnxruntime session with ``threads`` intra-op threads
    (default ``DEFAULT_THREADS``), fully optimized: the constant 4-bit weight decoding is
    folded at load."""
    path = Path(path)
    threads = DEFAULT_THREADS if threads is None else threads
    if not path.is_file():
        raise LowbitError(f"{str(path)!r} is not a file; give an .onnx file lowbit export wrote")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise LowbitError(f"threads must be a whole number of at least 1, got {threads!r}")
    try:
        import onnxruntime
    except ImportError:
        raise LowbitError(
            "running an ONNX model needs onnxruntime: pip install 'lowbit[onnx]' (or evaluate "
            "the lowbit export directory on the pure-PyTorch runtime: lowbit eval EXPORT_DIR)"
        ) from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # errors only
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own types for unreadable graphs
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LowbitError(f"onnxruntime cannot load {str(path)!r}: {reason}") from None
    metadata = decode_metadata(session.get_modelmeta().custom_metadata_map, path)
    return OnnxModel(session, metadata)


def decode_metadata(props: Mapping[str, str], source: str | Path) -> dict[str, Any]:
    """The ``lowbit.*`` entries of an ONNX file's ``metadata_props``, keys without the
    prefix, JSON values decoded."""
    metadata = {}
    for key, value in props.items():
        if key.startswith(PREFIX):
            try:
                metadata[key[len(PREFIX):]] = json.loads(value)
            except json.JSONDecodeError:
                raise LowbitError(
                    f"{str(source)!r}: the metadata {key!r} is not JSON; re-export the model"
                ) from None
    return metadata
