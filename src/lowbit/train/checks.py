"""What a run can get wrong, checked before its directory exists or a step trains.

A typo in a later stage's settings must cost seconds, not the float stage before it: the
names, numbers and flags of the config, every stage's model, quantizers, optimizer and
schedule (built on the meta device: shapes only), the init checkpoint, the output directory
and one decoded batch are all checked first. Each check raises a one-line ``LowbitError``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.adaptive.switchable import check_switchable_method
from lowbit.data import DataBundle, available_datasets
from lowbit.errors import LowbitError
from lowbit.models import available_models
from lowbit.quant.registry import get_method
from lowbit.train.build import model_from_config, quantize_from_config, stage_optimizer
from lowbit.train.checkpoint import load_checkpoint
from lowbit.train.optim import lr_factor
from lowbit.train.run_config import RunConfig

AMP_DTYPES = {None: None, "bf16": torch.bfloat16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise LowbitError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LowbitError("device cuda was asked for, but PyTorch sees no GPU here")
    return device


def amp_dtype(config: RunConfig) -> torch.dtype | None:
    """The autocast dtype ``config.amp`` names (``None``: float32 throughout)."""
    if config.amp not in AMP_DTYPES:
        raise LowbitError(f"amp must be bf16 or null, got {config.amp!r}")
    return AMP_DTYPES[config.amp]


def stage_plan(config: RunConfig) -> list[tuple[str, int, float]]:
    """``(stage, epochs, lr)`` of each stage the run trains, in order."""
    plan = []
    if config.float_epochs and config.init is None:
        plan.append(("float", config.float_epochs, config.float_lr))
    if config.epochs:
        plan.append(("quant", config.epochs, config.optimizer.lr))
    if not plan:
        raise LowbitError("nothing to train: set epochs or float_epochs above 0")
    return plan


def check_config(config: RunConfig | Mapping[str, Any]) -> RunConfig:
    """Names, bits, numbers and flags: everything the config alone can show. Returns the
    config parsed (``RunConfig.parse`` checks the numbers and flags)."""
    config = RunConfig.of(config)
    model_names, data_names = available_models(), available_datasets()
    if config.model.name not in model_names:
        raise LowbitError(
            f"unknown model {config.model.name!r}; available: {', '.join(model_names)}"
        )
    if config.data.name not in data_names:
        raise LowbitError(
            f"unknown data set {config.data.name!r}; available: {', '.join(data_names)}"
        )
    if config.epochs:
        method = get_method(config.method)
        method.check_bits(config.bits)
        if config.first_last_bits is not None:
            method.check_bits(config.first_last_bits, "first_last_bits")
        if config.adaptive is not None:
            check_switchable_method(config.method)
    stage_plan(config)
    lr_factor(0, 1, 1, config.schedule)
    amp_dtype(config)
    pick_device(config.device)
    if config.compile and config.adaptive is not None:
        raise LowbitError("compile: true trains one bit-width; set compile: false with adaptive")
    return config


def check_output_dir(out: str | Path) -> None:
    """Run directories can be created under ``out`` (probed by creating and removing an
    empty directory in its nearest existing ancestor, since permissions alone do not say:
    root ignores them, read-only mounts do not show in them)."""
    existing = Path(out).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise LowbitError(f"cannot create runs under {str(out)!r}: {str(existing)!r} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lowbit-probe-", dir=existing))
    except OSError as error:
        raise LowbitError(
            f"cannot create runs under {str(out)!r}: {str(existing)!r} is not writable "
            f"({error.strerror}); choose another --out"
        ) from None


def check_init(config: RunConfig, model: nn.Module) -> None:
    """The ``init`` checkpoint exists, holds the run's model and shares its weights."""
    path = config.init
    checkpoint = load_checkpoint(path)
    source = (checkpoint.get("config") or {}).get("model", {}).get("name")  # any producer's
    if source is not None and source != config.model.name:
        raise LowbitError(
            f"init checkpoint {str(path)!r} holds a {source} model; this run trains "
            f"{config.model.name}"
        )
    own = model.state_dict()
    for name, tensor in checkpoint["model"].items():
        # Quantizer state may differ in shape between bit-widths (progressive init skips it).
        if name in own and own[name].shape != tensor.shape and "_quantizer." not in name:
            raise LowbitError(
                f"init checkpoint {str(path)!r} does not fit this model: {name} has shape "
                f"{list(tensor.shape)} there and {list(own[name].shape)} here (other model "
                "options?)"
            )
    if not any(name in own for name in checkpoint["model"]):
        raise LowbitError(
            f"init checkpoint {str(path)!r} shares no tensor with {config.model.name}"
        )


def check_stages(config: RunConfig, data: DataBundle) -> None:
    """Build each stage's model (quantized where the stage is), optimizer and schedule on the
    meta device, check the init checkpoint against the quantized model, and decode one
    training batch."""
    with torch.device("meta"):  # shapes only: nothing is allocated or initialized
        model = model_from_config(config, data.num_classes, data.in_channels)
    for stage, _, lr in stage_plan(config):
        if stage == "quant":
            quantize_from_config(model, config)  # quantizers move to the layers' device
            if config.init:
                check_init(config, model)
        stage_optimizer(model, config, stage, lr)
    if len(data.train) == 0:
        raise LowbitError("no training images are left (data.limit, data.val_fraction?)")
    next(iter(data.train))  # one decoded batch: a data fault shows now, not mid-epoch
