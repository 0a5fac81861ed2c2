"""ONNX export of quantized models whose convolutions and matmuls run on integers.

Every quantized Conv2d / Linear whose weight and input are quantized becomes

    input -> integer codes -> ConvInteger / MatMulInteger (int32) -> Cast float
          -> Mul (one factor per output channel) -> Add bias

with its weight codes as int8 (uint8 for non-negative grids) initializers and zero points 0
(``lowbit.export.onnx_layers``). Input codes are rounded as the trained quantizer rounds them:
``round`` half to even, ``symmetric`` half-integer codes by magnitude, ``nearest`` level by a
grid lookup (Mul, Clip, Floor, Gather) whose cells end exactly on the decision boundaries, with
the quantizer's own float32 multiplier, so only inputs within float rounding of a boundary can
round differently. A BatchNormalization that reads nothing but such a layer is folded into
its Mul and Add (``lowbit.export.onnx_graph``). Layers whose input is float (the image into a
first layer) or whose codes need more than 8 bits stay float Conv / Gemm layers holding the
on-grid weights; ``onnx_summary`` lists them.

Weight codes of at most 16 levels (4-bit grids and below) are stored as 4-bit indices
(UINT4) into a table of the codes, decoded by Cast + Gather: onnxruntime (checked with 1.32)
folds these constants into 8-bit codes when it creates the session, since ConvInteger takes
8-bit inputs only; the file holds half a byte per weight. That needs opset 21; the TorchScript
exporter writes opset 20, which ``onnx.version_converter`` lifts.

Activations are not quantized with QuantizeLinear: its 8-bit range, zero point and
reciprocal-or-division arithmetic are the engine's, and it has no rule for APoT's uneven
levels. The rounding is written out instead (``lowbit.export.onnx_rounding``) with the
quantizer's own operations (``x / step`` is a Div, as in PyTorch), and tests check that
onnxruntime gives the quantizer's codes on every decision boundary.

The integer result equals the fake-quant model's up to float reassociation: the model sums
float products ``(alpha_w level_w)(alpha_x level_x)``, the graph sums exact integer products
and multiplies once. Needs the ``onnx`` package (``pip install 'lowbit[onnx]'``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.onnx_layers import IntegerConv2d, IntegerLinear, deployed_model
from lowbit.export.onnx_runtime import PREFIX, decode_metadata
from lowbit.files import atomic_write

TRACE_OPSET = 20  # the TorchScript exporter's highest
OPSET = 21  # Cast from UINT4
FORMAT = "lowbit-onnx"


def export_onnx(
    model: nn.Module,
    path: str | Path,
    sample: torch.Tensor,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (quantized, trained) as an integer ONNX graph traced on ``sample``
    (batch size free), atomically; returns ``path``.

    ``metadata`` (JSON values) goes into the file's ``metadata_props`` under ``lowbit.<key>``,
    with ``format``, ``integer_layers`` and ``float_layers`` ({name: why}); ``lowbit export``
    stores there what ``lowbit eval --onnx`` needs (the run config, data set, image size).
    """
    path = Path(path)
    check_target(path)
    # First: a model ONNX cannot express fails with or without the onnx package.
    deployed, float_layers = deployed_model(model)
    try:
        import onnx
        from onnx import version_converter
    except ImportError:
        raise LowbitError("ONNX export needs onnx: pip install 'lowbit[onnx]'") from None
    from lowbit.export import onnx_graph

    integer = [
        name for name, module in deployed.named_modules()
        if isinstance(module, (IntegerConv2d, IntegerLinear))
    ]
    props = {
        **(metadata or {}),
        "format": FORMAT,
        "integer_layers": integer,
        "float_layers": float_layers,
    }
    with atomic_write(path) as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        location = str(temporary)  # the exporter takes a str, not a Path, as a file location
        try:
            torch.onnx.export(
                deployed,
                (sample,),
                location,
                dynamo=False,
                opset_version=TRACE_OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        except (torch.onnx.errors.OnnxExporterError, RuntimeError) as error:
            # An operation of the float model that ONNX has no form for: name it in one line.
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "no reason"
            raise LowbitError(f"torch.onnx.export cannot express this model: {reason}") from None
        proto = onnx.load(location)
        onnx_graph.inline_identities(proto.graph)
        onnx_graph.fold_batch_norms(proto.graph)
        proto = version_converter.convert_version(proto, OPSET)
        onnx_graph.store_small_codes(proto.graph)
        onnx_graph.drop_unused_initializers(proto.graph)
        onnx.helper.set_model_props(
            proto, {PREFIX + key: json.dumps(value) for key, value in props.items()}
        )
        onnx.checker.check_model(proto)
        onnx.save(proto, location)
    return path


def check_target(path: Path) -> None:
    """A clear error when ``path`` cannot become a file: a directory, or under a file."""
    if path.is_dir():
        raise LowbitError(f"{str(path)!r} is a directory; give the .onnx file to write")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise LowbitError(f"{str(parent)!r} is a file, not a directory; choose another path")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``lowbit.*`` metadata of an ONNX file ``export_onnx`` wrote (``decode_metadata``),
    read with the onnx package."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return decode_metadata({prop.key: prop.value for prop in proto.metadata_props}, path)


def onnx_summary(path: str | Path) -> str:
    """What an exported file computes on integers, e.g. ``"20 integer layers (ConvInteger /
    MatMulInteger); float: conv1 (float input)"``."""
    metadata = read_metadata(path)
    text = f"{len(metadata['integer_layers'])} integer layers (ConvInteger / MatMulInteger)"
    floats = metadata["float_layers"]
    if floats:
        text += "; float: " + ", ".join(f"{name} ({why})" for name, why in floats.items())
    return text


def checkpoint_metadata(
    checkpoint: str | Path, info: dict[str, Any], sample: torch.Tensor, bits: int | None = None
) -> dict[str, Any]:
    """What ``lowbit eval --onnx`` needs from the checkpoint an export was made from: its run
    config (data set, loaders, input normalization) and, readable without lowbit, the model,
    method, ``bits`` (default the checkpoint's), data set, image size, classes and the
    config's normalization (``null``: the data set's standard one). ``info`` is
    ``lowbit.analysis.report.load_model``'s."""
    from lowbit.evaluate import checkpoint_config
    from lowbit.train.checkpoint import load_checkpoint

    config = checkpoint_config(load_checkpoint(str(checkpoint)), str(checkpoint))
    data = config.data
    return {
        "config": config.to_dict(),
        "model": info["name"],
        "method": info["method"],
        "bits": info["bits"] if bits is None else bits,
        "data": data.name,
        "image_size": int(sample.shape[-1]),
        "num_classes": info["num_classes"],
        "mean": None if data.mean is None else list(data.mean),
        "std": None if data.std is None else list(data.std),
    }
