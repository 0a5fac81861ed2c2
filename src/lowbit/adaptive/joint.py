"""The joint training step of CoQuant (supplement Algorithm 1) as a loss the trainer minimizes.

For each batch the bit-widths run from the highest down. b1 learns from the labels alone:
``L_b1 = CE(M_b1(x), y)``. Every lower b picks a teacher t among the higher bit-widths
(``teacher.py``), runs ``Swap(M_b, M_t, p)(x)`` (``swap.py``) and learns
``L_b = CE(y_b, y) + KL(y_t || y_b)``. The losses are summed; the trainer does one backward
and one optimizer step. The teacher's prediction ``y_t`` is its output earlier in the same
step, detached: no extra forward pass.

Baselines in the same code path: ``teacher="none"`` (switchable BatchNorm only: every b on
labels alone) and ``teacher="highest"`` with ``swap=False`` (AdaBits-style distillation from b1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.adaptive.settings import AdaptiveSettings
from lowbit.adaptive.swap import student_probabilities, swap_blocks, swap_forward
from lowbit.adaptive.switchable import model_bit_widths
from lowbit.adaptive.teacher import (
    bit_distances,
    choose_teacher,
    confidence,
    teacher_scores,
    weight_distances,
)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(y_t) || softmax(y_b))`` averaged over the batch (Algorithm 1, line 11); no
    gradient reaches the teacher."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=1),
        F.log_softmax(teacher_logits.detach(), dim=1),
        reduction="batchmean",
        log_target=True,
    )


def pick_teacher(
    settings: AdaptiveSettings,
    student_index: int,
    logits: dict[int, torch.Tensor],
    labels: torch.Tensor,
    distances: torch.Tensor | None,
) -> int | None:
    """The teacher of ``settings.bits[student_index]`` under ``settings.teacher``."""
    candidates = settings.bits[:student_index]
    if settings.teacher == "none":
        return None
    if settings.teacher == "highest":
        return candidates[0]
    if settings.teacher == "next":
        return candidates[-1]
    confidences = torch.stack([confidence(logits[t], labels) for t in candidates])
    gaps = distances[:student_index, student_index].to(confidences.device)
    return choose_teacher(candidates, teacher_scores(confidences, gaps, settings.lam))


def _set_block_bits(blocks: Sequence[Sequence[nn.Module]], bits: int) -> None:
    """Switch the modules of ``blocks`` to ``bits``: ``swap_blocks`` puts every switchable
    module in one block, so this is ``set_bits`` without walking the whole model, which a
    training step would otherwise do once per bit-width."""
    for block in blocks:
        for module in block:
            module.set_bits(bits)


def joint_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: AdaptiveSettings,
    blocks: Sequence[Sequence[nn.Module]],
    progress: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Algorithm 1's summed loss for one batch and the logits at every bit-width.

    ``blocks`` are ``swap_blocks`` of the (unwrapped) model; ``progress`` is the fraction of
    training done (the swap schedule). Leaves the model at the highest bit-width.
    """
    if not blocks:
        model_bit_widths(model)  # raises the explanation for a single-precision model
    widths = settings.bits
    distances = None
    if settings.teacher == "dynamic" and len(widths) > 1:
        distances = (
            weight_distances(model, widths) if settings.distance == "weights"
            else bit_distances(widths)
        )
    logits: dict[int, torch.Tensor] = {}
    total = torch.zeros((), device=images.device)
    for index, bits in enumerate(widths):
        teacher = pick_teacher(settings, index, logits, labels, distances) if index else None
        if teacher is not None and settings.swap:
            keep = student_probabilities(settings.p1, progress, len(blocks), settings.swap_schedule)
            output = swap_forward(model, blocks, bits, teacher, keep, images)
        else:
            _set_block_bits(blocks, bits)
            output = model(images)
        loss = F.cross_entropy(output, labels, label_smoothing=label_smoothing)
        if teacher is not None:
            loss = loss + distillation_loss(output, logits[teacher])
        total = total + loss
        logits[bits] = output
    _set_block_bits(blocks, widths[0])
    return total, logits


class JointObjective(nn.Module):
    """The trainer's objective for joint training: ``objective(images, labels, progress)``
    returns the summed loss of ``joint_loss`` and the highest bit-width's logits.

    A module holding ``model``, so that DistributedDataParallel wraps the whole step: its
    reducer then sees one forward per backward, with the parameters this step left unused
    (a swapped-out student block's BatchNorm) found from the summed loss.
    """

    def __init__(
        self, model: nn.Module, settings: AdaptiveSettings, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.model, self.settings, self.label_smoothing = model, settings, label_smoothing
        self.blocks = swap_blocks(model, settings.block_depth)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = joint_loss(
            self.model, images, labels, self.settings, self.blocks, progress,
            self.label_smoothing,
        )
        return loss, logits[self.settings.bits[0]]
