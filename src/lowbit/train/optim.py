"""Optimizers with parameter groups for quantizer parameters, and per-step lr schedules."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.train.run_config import OptimizerConfig, QuantizerOptimConfig, ScheduleConfig


def parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, quantizer: QuantizerOptimConfig
) -> list[dict[str, Any]]:
    """Network weights, weight-quantizer and input-quantizer parameters as three groups.

    Quantizer parameters (clipping thresholds, step sizes) get ``quantizer``'s lr and weight
    decay (APoT §C.2 trains alpha at its own lr; UniQ uses no decay on step sizes).
    """
    groups: dict[str, list[nn.Parameter]] = {
        "weights": [],
        "weight_quantizer": [],
        "input_quantizer": [],
    }
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        dotted = f".{name}"
        if ".weight_quantizer." in dotted:
            groups["weight_quantizer"].append(parameter)
        elif ".input_quantizer." in dotted:
            groups["input_quantizer"].append(parameter)
        else:
            groups["weights"].append(parameter)
    settings = {
        "weights": (lr, weight_decay),
        "weight_quantizer": (quantizer.weight_lr or lr, quantizer.weight_decay),
        "input_quantizer": (quantizer.input_lr or lr, quantizer.weight_decay),
    }
    return [
        {"params": params, "lr": settings[key][0], "weight_decay": settings[key][1], "name": key}
        for key, params in groups.items()
        if params
    ]


def build_optimizer(
    model: nn.Module, optimizer: OptimizerConfig, quantizer: QuantizerOptimConfig, lr: float
) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), Adam or AdamW at ``lr`` over ``parameter_groups``."""
    groups = parameter_groups(model, lr, optimizer.weight_decay, quantizer)
    name = optimizer.name.lower()
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=optimizer.momentum, nesterov=optimizer.nesterov
        )
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(groups, lr=lr, betas=optimizer.betas)
    raise LowbitError(f"unknown optimizer {optimizer.name!r}; choose sgd, adam or adamw")


def lr_factor(
    step: int,
    steps_per_epoch: int,
    epochs: int,
    schedule: ScheduleConfig | Mapping[str, Any],
    base_lr: float = 1.0,
) -> float:
    """Multiplier of the base lr at optimizer step ``step``: a warm-up (linear, or held at
    ``warmup_lr``), then cosine to zero, multistep decay at epoch ``milestones``, or
    constant."""
    schedule = ScheduleConfig.of(schedule)
    total = max(1, steps_per_epoch * epochs)
    warmup = int(schedule.warmup_epochs * steps_per_epoch)
    if step < warmup:
        held = schedule.warmup_lr
        return held / base_lr if held is not None else (step + 1) / warmup
    name = schedule.name
    if name == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if name == "multistep":
        epoch = step / steps_per_epoch
        passed = sum(1 for milestone in schedule.milestones if epoch >= milestone)
        return schedule.gamma ** passed
    if name == "constant":
        return 1.0
    raise LowbitError(f"unknown schedule {name!r}; choose cosine, multistep or constant")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    epochs: int,
    schedule: ScheduleConfig,
    base_lr: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule; ``base_lr`` is the network weights' lr (``warmup_lr`` is relative
    to it, and the quantizer groups follow in proportion)."""
    lr_factor(0, steps_per_epoch, epochs, schedule, base_lr)  # fail on a bad name up front
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, schedule, base_lr)
    )
