"""Dynamic teacher selection (CoQuant Eq. 4, as read in ``docs/coquant.md``).

For a student bit-width ``s``, every higher bit-width ``t`` of the set already run on this
batch is a candidate, scored by

    score(t) = confidence(t) - lambda * distance(t, s)

``confidence(t)``: the teacher's mean softmax probability of the true label over the batch
(how sure and how right its prediction is). ``distance(t, s)``: how far the two precisions of
the shared network are apart, by default the L2 norm of the difference between all their
quantized weights, ``sqrt(sum_l ||Q_t(W_l) - Q_s(W_l)||^2)`` (``"weights"``), or the bit gap
``|t - s|`` (``"bits"``). The teacher is the argmax; a tie goes to the higher bit-width.
lambda = 0.001 is the supplement's value for every data set but one (Table 2): lambda = 0 picks
the most confident teacher, a large lambda the nearest one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean softmax probability of the true label: the teacher's prediction confidence."""
    probabilities = torch.softmax(logits.detach().float(), dim=1)
    return probabilities.gather(1, labels[:, None]).mean()


def teacher_scores(
    confidences: torch.Tensor, distances: torch.Tensor, lam: float
) -> torch.Tensor:
    """Eq. 4 as read here: ``confidence - lambda * distance`` for each candidate teacher."""
    return confidences - lam * distances


def choose_teacher(candidates: Sequence[int], scores: torch.Tensor) -> int:
    """The candidate bit-width with the highest score; candidates come highest first, and
    ``argmax`` returns the first maximum, so a tie goes to the higher bit-width."""
    return candidates[int(torch.argmax(scores))]


@torch.no_grad()
@torch.no_grad()
def weight_distances(model: nn.Module, bit_widths: Sequence[int]) -> torch.Tensor:
    """``D[i, j] = sqrt(sum over layers ||Q_{b_i}(W) - Q_{b_j}(W)||^2)`` for the switchable
    weight quantizers of ``model`` (those with ``bit_widths`` and ``quantize_at``). Only the
    teacher choice reads it, so no gradient is recorded (a joint step computes it once)."""
    n = len(bit_widths)
    squared = torch.zeros(n, n)
    for layer in model.modules():
        quantizer = getattr(layer, "weight_quantizer", None)
        if quantizer is None or not getattr(quantizer, "bit_widths", None):
            continue
        quantized = torch.stack([quantizer.quantize_at(layer.weight, b) for b in bit_widths])
        flat = quantized.reshape(n, -1).float()
        squared = squared.to(flat.device) + torch.cdist(flat, flat).square()
    return squared.sqrt()


def bit_distances(bit_widths: Sequence[int]) -> torch.Tensor:
    """``D[i, j] = |b_i - b_j|``."""
    bits = torch.tensor(bit_widths, dtype=torch.float32)
    return (bits[:, None] - bits[None, :]).abs()
