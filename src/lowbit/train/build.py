"""What a run's config describes, built: the data loaders and the float model.

Shared by training, ``lowbit eval`` and checkpoint import, so a checkpoint's ``config``
rebuilds exactly the model and inputs it was made with.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowbit.data import DataBundle, build_data
from lowbit.models import build_model


def data_from_config(
    config: dict[str, Any], device: torch.device, rank: int = 0, world_size: int = 1
) -> DataBundle:
    """The train and test loaders ``config["data"]`` describes, on ``device``."""
    data = config["data"]
    return build_data(
        data["name"],
        data_dir=data["dir"],
        batch_size=data["batch_size"],
        eval_batch_size=data["eval_batch_size"],
        device=device,
        seed=config["seed"],
        rank=rank,
        world_size=world_size,
        limit=data["limit"],
        workers=data["workers"],
        mean=data.get("mean"),  # absent from configs written before the key existed
        std=data.get("std"),
    )


def model_from_config(config: dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    """The float model ``config["model"]`` names, with ``num_classes`` outputs."""
    return build_model(
        config["model"]["name"],
        num_classes=num_classes,
        in_channels=in_channels,
        **config["model"]["options"],
    )
