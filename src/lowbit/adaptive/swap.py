"""Dynamic block swapping (CoQuant §3 of the supplement; the rule as read in docs/coquant.md).

The student's forward pass runs each block either at its own bit-width or at its teacher's:
a block is the set of switchable modules (quantizers and BatchNorms) of one residual block,
so a swap is "set these modules to the teacher's bits" before one ordinary forward pass.

Block ``l`` of ``L`` keeps the student's bits with probability ``p_l``. ``p1`` (Table 2) is
that probability for the first block; it rises linearly to 1 over training, and (``"linear"``
schedule) over depth from ``p1`` at the first block to 1 at the last. ``"flat"`` gives every
block ``p1``. Probability 1 everywhere is the student's own forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lowbit.adaptive.switchable import switchable_modules


def swap_blocks(model: nn.Module, depth: int = 2) -> list[list[nn.Module]]:
    """The switchable modules of ``model`` grouped into blocks, in registration order.

    A layer (Conv2d/Linear) belongs to the block named by the first ``depth`` parts of its
    dotted name (``layer1.0.conv2`` -> ``layer1.0``: a ResNet basic block;
    ``features.3.conv.1.0`` -> ``features.3``: a MobileNetV2 inverted residual); a BatchNorm
    belongs to the block of the layer registered just before it (the layer it normalizes).
    """
    switching = {id(m) for m in switchable_modules(model)}
    blocks: dict[str, list[nn.Module]] = {}
    current = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            current = ".".join(name.split(".")[:depth])
        if id(module) in switching:
            key = current if current is not None else ".".join(name.split(".")[:depth])
            blocks.setdefault(key, []).append(module)
    return list(blocks.values())


def student_probabilities(
    p1: float, progress: float, n_blocks: int, schedule: str = "linear"
) -> list[float]:
    """Probability of keeping each block at the student's bits, ``progress`` in [0, 1] of
    training done: ``p1 + (1 - p1) progress`` for the first block, rising to 1 at the last
    (``"linear"``) or the same for all (``"flat"``)."""
    first = p1 + (1.0 - p1) * min(max(progress, 0.0), 1.0)
    if schedule == "flat" or n_blocks == 1:
        return [first] * n_blocks
    return [first + (1.0 - first) * i / (n_blocks - 1) for i in range(n_blocks)]


def swap_forward(
    model: nn.Module,
    blocks: Sequence[Sequence[nn.Module]],
    student: int,
    teacher: int,
    probabilities: Sequence[float],
    images: torch.Tensor,
) -> torch.Tensor:
    """``Swap(M_student, M_teacher, p)(images)`` (Algorithm 1, line 10): each block runs at the
    student's bits with its probability, else at the teacher's; one draw per block and batch
    from the global generator (reseeded every epoch by the trainer)."""
    keep = (torch.rand(len(blocks)) < torch.tensor(probabilities, dtype=torch.float32)).tolist()
    for block, own in zip(blocks, keep):
        for module in block:
            module.set_bits(student if own else teacher)
    return model(images)
