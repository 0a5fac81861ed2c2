"""What ``lowbit report | plot | export`` take as MODEL: a zoo name (quantized on the spot with
``--method`` / ``--bits``) or a lowbit checkpoint; and the text form of a cost report.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lowbit
from lowbit.analysis.cost import ModelCost
from lowbit.errors import LowbitError
from lowbit.evaluate import checkpoint_config, rebuild_model
from lowbit.models import available_models, build_model
from lowbit.nn.quantize import quantizable_layers
from lowbit.train.checkpoint import load_checkpoint

# Input side of the images each zoo model / data set is made for (``--image-size`` overrides).
MODEL_IMAGE_SIZE = {"resnet18": 224, "resnet34": 224, "resnet50": 224, "mobilenetv2": 224,
                    "preact_resnet18": 224, "preact_resnet34": 224,
                    "lenet5": 28, "small_cnn": 8}
DATA_IMAGE_SIZE = {"imagenet": 224, "image_folder": 224, "mnist": 28, "fashion_mnist": 28,
                   "digits": 8}
DEFAULT_IMAGE_SIZE = 32


def load_model(
    source: str,
    method: str | None = None,
    bits: int | None = None,
    first_last_bits: int | None = 8,
    device: str = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, info)`` for a zoo name or a checkpoint path.

    A zoo model is built on ``device`` (``"meta"``: shapes only, for counting) and quantized
    with ``method`` / ``bits`` when given; a checkpoint rebuilds the model its config
    describes, with its tensors. ``info`` has ``name``, ``options``, ``num_classes``,
    ``in_channels`` (what an export records), ``method``, ``bits`` and ``image_size``.
    """
    if Path(source).is_file():
        if method is not None or bits is not None:
            raise LowbitError(
                "a checkpoint carries its own method and bits; drop --method / --bits"
            )
        return _from_checkpoint(source)
    if source not in available_models():
        raise LowbitError(
            f"{source!r} is neither a checkpoint file nor a zoo model; zoo models: "
            f"{', '.join(available_models())}"
        )
    if (method is None) != (bits is None):
        raise LowbitError("give --method and --bits together (neither for the float model)")
    with torch.device(device):
        model = build_model(source)
    if method is not None:
        lowbit.quantize(model, method, bits, first_last_bits)
    first, last = _first_last(model)
    info = {
        "name": source,
        "options": {},
        "num_classes": last.weight.shape[0],
        "in_channels": first.weight.shape[1] * getattr(first, "groups", 1),
        "method": method or "float",
        "bits": bits or 32,
        "image_size": MODEL_IMAGE_SIZE.get(source, DEFAULT_IMAGE_SIZE),
    }
    return model, info


def _first_last(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    layers = [module for _, module in model.named_modules()
              if isinstance(module, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise LowbitError(f"{type(model).__name__} has no Conv2d or Linear layer")
    return layers[0], layers[-1]


def _from_checkpoint(path: str) -> tuple[nn.Module, dict[str, Any]]:
    checkpoint = load_checkpoint(path)
    config = checkpoint_config(checkpoint, path)
    # The data set is not needed: the first and last layers' shapes give its classes and
    # channels (every zoo model starts with a conv and ends with a linear layer).
    with torch.device("meta"):
        skeleton = build_model(config.model.name, **config.model.options)
    names = [name for name, _ in quantizable_layers(skeleton)]
    state = checkpoint["model"]
    try:
        in_channels = state[f"{names[0]}.weight"].shape[1] * getattr(
            skeleton.get_submodule(names[0]), "groups", 1)
        num_classes = state[f"{names[-1]}.weight"].shape[0]
    except (IndexError, KeyError):
        raise LowbitError(f"{path!r} does not hold the layers of {config.model.name}") from None
    model = rebuild_model(checkpoint, num_classes, in_channels, path, config)
    quantized = checkpoint.get("stage", "quant") == "quant" and config.bits is not None
    info = {
        "name": config.model.name,
        "options": dict(config.model.options),
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "method": config.method if quantized else "float",
        "bits": config.bits if quantized else 32,
        "image_size": DATA_IMAGE_SIZE.get(config.data.name, DEFAULT_IMAGE_SIZE),
    }
    return model, info


def sample_input(model: nn.Module, info: dict[str, Any], image_size: int | None = None,
                 batch: int = 1) -> torch.Tensor:
    """A zero batch shaped like the model's input, on the model's device."""
    side = image_size or info["image_size"]
    device = next(model.parameters()).device
    return torch.zeros(batch, info["in_channels"], side, side, device=device)


def deploy_sizes(model: nn.Module, sample: torch.Tensor, info: dict[str, Any]) -> dict[str, Any]:
    """Bytes of the two deployments of a trained, quantized ``model`` (``info`` from
    ``load_model``): ``export_bytes``, what ``lowbit export`` writes (``export_size``: codes
    packed to their bits, computed in memory; the command adds the run's config to the
    manifest, a few KB), and ``onnx_bytes``, the integer ONNX graph
    (``export_onnx``: 8-bit codes, 4-bit indices for grids of up to 16 levels; the graph only
    exists once the exporter has written it, so it is written to a temporary directory and
    measured; ``lowbit export --onnx`` adds the run's config as metadata, a few KB), with
    ``onnx_float_layers`` ({layer: why}), the layers the ONNX graph computes in float. A size
    that cannot be had is ``None`` and ``export_note`` / ``onnx_note`` say why (a network of
    several bit-widths, no onnx package, a grid ONNX cannot round onto)."""
    from lowbit.export.bit_width import single_bit_width
    from lowbit.export.onnx import export_onnx, read_metadata
    from lowbit.export.writer import export_size

    sizes: dict[str, Any] = {"export_bytes": None, "onnx_bytes": None, "onnx_float_layers": None}
    try:
        single_bit_width(model, None)
    except LowbitError:
        note = "a network of several bit-widths deploys one: lowbit export --bits B"
        return {**sizes, "export_note": note, "onnx_note": note}
    try:
        keys = ("name", "options", "num_classes", "in_channels")
        sizes["export_bytes"] = export_size(model, {key: info[key] for key in keys})
    except LowbitError as error:
        sizes["export_note"] = str(error)
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = export_onnx(model, Path(folder) / "model.onnx", sample)
            sizes["onnx_bytes"] = path.stat().st_size
            sizes["onnx_float_layers"] = read_metadata(path)["float_layers"]
    except LowbitError as error:
        sizes["onnx_note"] = str(error)
    return sizes


def format_sizes(sizes: dict[str, Any]) -> str:
    """The ``deploy_sizes`` line of a report."""
    parts = []
    for what, key in (("lowbit export", "export"), ("ONNX", "onnx")):
        size = sizes[f"{key}_bytes"]
        parts.append(f"{what} {significant(size / 2**20)} MB" if size is not None
                     else f"{what}: {sizes[f'{key}_note']}")
    text = "deployed: " + "; ".join(parts)
    floats = sizes["onnx_float_layers"]
    if floats is not None:
        text += "; float in ONNX: " + (
            ", ".join(f"{name} ({why})" for name, why in floats.items()) or "none")
    return text


def significant(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, keeping trailing zeros (Table 1's style)."""
    if value == 0:
        return "0"
    decimals = max(digits - 1 - math.floor(math.log10(abs(value))), 0)
    return f"{value:.{decimals}f}"


def count(value: float) -> str:
    """An operation or parameter count with a K / M / G suffix, 3 significant digits."""
    for suffix, unit in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= unit * 0.9995:
            return significant(value / unit) + suffix
    return significant(value)


def format_report(cost: ModelCost, info: dict[str, Any]) -> str:
    """The per-layer table and the totals as text."""
    label = info["method"] if info["method"] == "float" else f"{info['method']} {info['bits']}-bit"
    rows = [f"{info['name']} {label}",
            f"{'layer':<28}{'type':<8}{'W/A bits':>9}{'params':>9}{'MACs':>9}"
            f"{'FixOPs':>9}{'BitOPs':>9}"]
    for layer in cost.layers:
        bits = f"{layer.weight_bits or 32}/{layer.input_bits or 32}"
        kind = layer.kind.removeprefix("Q")
        rows.append(f"{layer.name:<28}{kind:<8}{bits:>9}{count(layer.params):>9}"
                    f"{count(layer.macs):>9}{count(layer.fixops):>9}{count(layer.bitops):>9}")
    rows.append(
        f"total: {count(cost.params)} parameters, size {significant(cost.size_mb)} MB "
        f"(2^20 bytes), {count(cost.macs)} MACs, {count(cost.fixops)} FixOPs, "
        f"{count(cost.bitops)} BitOPs"
    )
    return "\n".join(rows)
