"""BatchNorm recalibration at any bit-width, without gradients (CoQuant supplement Table 3).

A bit-width outside the trained set (zero-shot) borrows the BatchNorm of the nearest trained
one, whose running statistics belong to another precision. Re-estimating them from a few
training batches at the new precision, with every parameter untouched, is the supplement's
"BN calibration".
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lowbit.adaptive.switchable import BATCH_NORMS, SwitchableBatchNorm


def active_norms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorms a forward pass uses now: the active member of each switchable one and
    every plain BatchNorm."""
    members, active = set(), []
    for module in model.modules():
        if isinstance(module, SwitchableBatchNorm):
            members.update(id(norm) for norm in module.norms.values())
            active.append(module.active)
    active += [m for m in model.modules() if isinstance(m, BATCH_NORMS) and id(m) not in members]
    return active


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, max_batches: int) -> int:
    """Replace the running mean/variance of the active BatchNorms by their plain average over up
    to ``max_batches`` batches at the model's current bits. Parameters, other buffers and the
    inactive BatchNorms are not touched. Returns the number of batches used."""
    if max_batches <= 0:
        return 0
    norms = active_norms(model)
    modes = [(m, m.training) for m in model.modules()]
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # None = cumulative moving average: every batch weighs the same
        norm.train()
    used = 0
    try:
        for batch in batches:
            if used >= max_batches:
                break
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            used += 1
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        for module, training in modes:
            module.training = training
    return used
