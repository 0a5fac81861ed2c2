"""``lowbit eval``: rebuild the model a checkpoint's config describes, load it, test it; or
test a model exported as ONNX (``lowbit eval --onnx``) on the same data, with onnxruntime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.adaptive.evaluation import evaluate_bit_widths
from lowbit.adaptive.settings import AdaptiveSettings
from lowbit.adaptive.switchable import model_bit_widths
from lowbit.errors import LowbitError
from lowbit.train.build import data_from_config, model_from_config, quantize_from_config
from lowbit.train.checkpoint import load_checkpoint
from lowbit.train.checks import pick_device
from lowbit.train.loop import evaluate
from lowbit.train.run_config import RunConfig

SHOWN_NAMES = 3  # names listed per kind of mismatch; the error stays one line
# What a run config must hold to rebuild and test its model (another program's "config" lacks
# them).
SECTIONS = ("model", "data")


def _some(names: list[str]) -> str:
    more = len(names) - SHOWN_NAMES
    return ", ".join(names[:SHOWN_NAMES]) + (f" and {more} more" if more > 0 else "")


def load_exactly(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` (strict); a mismatch is one ``LowbitError`` naming the
    missing, unexpected and reshaped tensors instead of PyTorch's multi-line report."""
    own = model.state_dict()
    missing = [name for name in own if name not in state]
    unexpected = [name for name in state if name not in own]
    reshaped = [
        f"{name} {tuple(state[name].shape)} vs {tuple(own[name].shape)}"
        for name in own
        if name in state and state[name].shape != own[name].shape
    ]
    problems = [
        f"{kind} {_some(names)}"
        for kind, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("checkpoint vs model shapes", reshaped),
        )
        if names
    ]
    if problems:
        raise LowbitError(
            f"{source} does not fit the model its config describes ({'; '.join(problems)}); "
            "it was made by another model or method"
        )
    model.load_state_dict(state)


def checkpoint_config(
    checkpoint: dict[str, Any], source: str, *changes: Mapping[str, Any]
) -> RunConfig:
    """The run config stored in a lowbit checkpoint (completed for keys it predates), with
    ``changes`` over it."""
    config = checkpoint.get("config")
    if not (isinstance(config, dict) and all(isinstance(config.get(k), dict) for k in SECTIONS)):
        raise LowbitError(
            f"{source} has no config to rebuild its model from; use a checkpoint written by "
            "lowbit train or lowbit import"
        )
    return RunConfig.stored(config, *changes)


def rebuild_model(
    checkpoint: dict[str, Any], num_classes: int, in_channels: int, source: str,
    config: RunConfig | None = None,
) -> nn.Module:
    """The model ``config`` (default: the checkpoint's own) describes, quantized unless the
    checkpoint holds a float stage (``float.pt``), with the checkpoint's tensors loaded."""
    config = config or checkpoint_config(checkpoint, source)
    model = model_from_config(config, num_classes, in_channels)
    if checkpoint.get("stage", "quant") == "quant":
        quantize_from_config(model, config)
    load_exactly(model, checkpoint["model"], source)
    return model


# In a run directory of ``lowbit train``, the checkpoint ``lowbit eval`` tests: the best
# quantized epoch, else the latest (a float-only or unfinished run has no best.pt).
RUN_CHECKPOINTS = ("best.pt", "last.pt")


def find_checkpoint(path: str | Path) -> Path:
    """``path``, or the first of ``RUN_CHECKPOINTS`` in it when it is a directory."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in RUN_CHECKPOINTS:
        if (path / name).is_file():
            return path / name
    raise LowbitError(
        f"{str(path)!r} holds no {' or '.join(RUN_CHECKPOINTS)}; pass a checkpoint file or a "
        "run directory of lowbit train"
    )


def data_changes(
    data: str | None, data_dir: str | None, batch_size: int | None
) -> dict[str, dict[str, Any]]:
    """The config changes of ``lowbit eval``'s data options (those given)."""
    given = (("name", data), ("dir", data_dir), ("eval_batch_size", batch_size))
    return {"data": {key: value for key, value in given if value is not None}}


def evaluate_checkpoint(
    path: str | Path,
    data: str | None = None,
    data_dir: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    bits: Sequence[int] | None = None,
    calibration_batches: int | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 (%), loss and n of the checkpoint at ``path`` (a file, or a run directory:
    ``find_checkpoint``; ``"checkpoint"`` in the result names the file) on its data's test split.

    ``data``, ``data_dir`` and ``batch_size`` replace the config's; the input normalization
    stays the checkpoint's (``data.mean`` / ``data.std``): the model was trained with it.
    ``bits`` (a network trained with ``adaptive.bits``): one row per bit-width in ``rows``
    instead, those outside the trained set zero-shot, after BatchNorm recalibration on
    ``calibration_batches`` training batches (default: the run's
    ``adaptive.bn_calibration_batches``).
    """
    source = str(find_checkpoint(path))
    checkpoint = load_checkpoint(source)
    config = checkpoint_config(checkpoint, source, data_changes(data, data_dir, batch_size))
    target = pick_device(device)
    bundle = data_from_config(config, target)
    model = rebuild_model(checkpoint, bundle.num_classes, bundle.in_channels, source, config)
    settings = config.adaptive
    if bits is not None:
        if calibration_batches is None:
            # Without an adaptive section, the default: evaluate_bit_widths then says that the
            # model has one bit-width.
            calibration_batches = (settings or AdaptiveSettings).bn_calibration_batches
        rows = evaluate_bit_widths(
            model.to(target), bits, bundle.test, bundle.train, calibration_batches
        )
        return {
            "checkpoint": source,
            "model": config.model.name,
            "method": config.method,
            "trained_bits": list(model_bit_widths(model)),
            "data": config.data.name,
            "rows": rows,
        }
    metrics = evaluate(model.to(target), bundle.test)
    # A float stage, or a config whose bits are None (only overridden layers quantized).
    quantized = checkpoint.get("stage", "quant") == "quant" and config.bits is not None
    return {
        **metrics,
        "checkpoint": source,
        "model": config.model.name,
        "method": config.method if quantized else "float",
        # An adaptive network is tested at its highest bit-width.
        "bits": (settings.bits[0] if settings else config.bits) if quantized else 32,
        "data": config.data.name,
    }


def evaluate_onnx(
    path: str | Path,
    data: str | None = None,
    data_dir: str | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """``evaluate_checkpoint`` of a model deployed as ONNX by ``lowbit export --onnx``: the
    same metrics and keys, measured with onnxruntime (``threads`` intra-op threads, default
    ``lowbit.export.onnx_runtime.DEFAULT_THREADS``) on the test split of the data the run
    config stored in the file describes (its data loaders and input normalization)."""
    from lowbit.export.onnx_runtime import load_onnx  # onnxruntime only when asked for

    model = load_onnx(path, threads)
    return _evaluate_deployed(model, model.metadata, str(path), data, data_dir, batch_size)


def evaluate_export(
    export_dir: str | Path,
    data: str | None = None,
    data_dir: str | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """``evaluate_checkpoint`` of a ``lowbit export`` directory, run by the pure-PyTorch deploy
    runtime (``lowbit.export.runtime.load_runtime``: no onnxruntime needed), on the data of the
    run config the export stored."""
    from lowbit.export.runtime import load_runtime, read_manifest

    run = read_manifest(export_dir).get("run") or {}
    model = load_runtime(export_dir)
    return _evaluate_deployed(model, run, str(export_dir), data, data_dir, batch_size)


def _evaluate_deployed(
    model: nn.Module,
    run: dict[str, Any],
    source: str,
    data: str | None,
    data_dir: str | None,
    batch_size: int | None,
) -> dict[str, Any]:
    """Top-1/top-5 of a deployed ``model`` on the test data of ``run["config"]`` (the
    checkpoint's run config, stored at export)."""
    stored = run.get("config")
    if not isinstance(stored, dict):
        raise LowbitError(
            f"{source!r} holds no lowbit run config; export it from a checkpoint with "
            "lowbit export CKPT -o DIR [--onnx FILE]"
        )
    config = checkpoint_config({"config": stored}, source, data_changes(data, data_dir, batch_size))
    bundle = data_from_config(config, torch.device("cpu"))
    metrics = evaluate(model, bundle.test)
    return {
        **metrics,
        "checkpoint": source,
        "model": config.model.name,
        "method": run.get("method", config.method),
        "bits": run.get("bits", config.bits),
        "data": config.data.name,
    }
