"""What a run's config describes, built: the data loaders, the float and quantized model, and
each stage's optimizer.

Shared by training, ``lowbit eval`` and checkpoint import, so a checkpoint's ``config``
rebuilds exactly the model and inputs it was made with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

import lowbit
from lowbit.adaptive import make_adaptive
from lowbit.data import DataBundle, build_data
from lowbit.models import build_model
from lowbit.train.optim import build_optimizer
from lowbit.train.run_config import RunConfig


def data_from_config(
    config: RunConfig | Mapping[str, Any], device: torch.device, rank: int = 0,
    world_size: int = 1,
) -> DataBundle:
    """The train, validation and test loaders ``config.data`` describes, on ``device``."""
    config = RunConfig.of(config)
    data = config.data
    return build_data(
        data.name,
        data_dir=data.dir,
        batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size,
        device=device,
        seed=config.seed,
        rank=rank,
        world_size=world_size,
        limit=data.limit,
        workers=data.workers,
        mean=data.mean,
        std=data.std,
        val_fraction=data.val_fraction,
        eval_limit=data.eval_limit,
        skip_bad_files=data.skip_bad_files,
    )


def model_from_config(
    config: RunConfig | Mapping[str, Any], num_classes: int, in_channels: int
) -> nn.Module:
    """The float model ``config.model`` names, with ``num_classes`` outputs."""
    model = RunConfig.of(config).model
    return build_model(
        model.name, num_classes=num_classes, in_channels=in_channels, **model.options
    )


def quantize_from_config(model: nn.Module, config: RunConfig | Mapping[str, Any]) -> nn.Module:
    """``model`` with the quantized layers ``config`` describes (in place), one bit-width or
    the ``adaptive`` set."""
    config = RunConfig.of(config)
    options = {
        "overrides": dict(config.overrides),
        "weight_options": dict(config.weight_options),
        "input_options": dict(config.input_options),
        "float_downsample": config.float_downsample,
        "quantize_inputs": config.quantize_inputs,
    }
    if config.adaptive is not None:  # one network for every bit-width in adaptive.bits
        return make_adaptive(
            model, config.adaptive.bits, config.method, config.first_last_bits, **options
        )
    return lowbit.quantize(model, config.method, config.bits, config.first_last_bits, **options)


def stage_optimizer(
    model: nn.Module, config: RunConfig, stage: str, lr: float
) -> torch.optim.Optimizer:
    """The optimizer of ``stage``: the float stage's own settings, or the quantized one's."""
    settings = config.float_optimizer if stage == "float" else config.optimizer
    return build_optimizer(model, settings, config.quantizer_optim, lr)
