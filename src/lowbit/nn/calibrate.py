"""Data-driven quantizer initialization: show quantizers real inputs before training.

A quantizer that wants it defines ``observe(x)`` (``lowbit.quant.hooks.Observer``): it is
called, under ``no_grad``, with every tensor the quantizer sees during ``calibrate`` (weights
and layer inputs alike), and updates its own state (UniQ's activation step size from the
maximum of per-batch estimates, LSQ's 2·E|x|/sqrt(Q_P), ...). Quantizers without ``observe``
are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lowbit.quant.hooks import Observer


def observing_quantizers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, Observer)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, max_batches: int) -> int:
    """Run up to ``max_batches`` input batches through ``model``, letting every quantizer
    with an ``observe`` method see its inputs first. Returns the number of batches used."""
    quantizers = observing_quantizers(model)
    if not quantizers or max_batches <= 0:
        return 0
    hooks = [q.register_forward_pre_hook(lambda q, args: q.observe(args[0])) for q in quantizers]
    was_training = model.training
    model.eval()  # BatchNorm statistics are not what calibration is about
    used = 0
    try:
        for batch in batches:
            if used >= max_batches:
                break
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(inputs)
            used += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return used
