"""Dynamic teacher selection, CoQuant Eq. 4 as docs/coquant.md reads it:
score(t) = confidence(t) - lambda * distance(t, s), the teacher is the argmax."""

import pytest
import torch

from lowbit.adaptive import AdaptiveSettings
from lowbit.adaptive.joint import pick_teacher
from lowbit.adaptive.teacher import (
    bit_distances,
    choose_teacher,
    confidence,
    teacher_scores,
    weight_distances,
)

LABELS = torch.tensor([0, 1, 2, 3])


def logits_with_confidence(p):
    """Logits whose softmax gives the true label probability ``p`` on every sample."""
    rest = (1 - p) / 3
    probabilities = torch.full((4, 4), rest)
    probabilities[torch.arange(4), LABELS] = p
    return probabilities.log()


def test_confidence_is_the_mean_true_label_probability():
    assert confidence(logits_with_confidence(0.7), LABELS).item() == pytest.approx(0.7)


@pytest.mark.parametrize("lam", [0.0, 0.001, 0.05, 1.0])
def test_the_teacher_is_the_argmax_of_the_score(lam):
    """Student 2 bits, candidates 8, 6, 4 with confidences 0.9, 0.8, 0.6 and weight distances
    20, 10, 4: the choice is argmax(confidence - lambda * distance); lambda = 0 gives the most
    confident (8), lambda = 1 the nearest (4)."""
    settings = AdaptiveSettings(bits=(8, 6, 4, 2), lam=lam)
    confidences = {8: 0.9, 6: 0.8, 4: 0.6}
    logits = {b: logits_with_confidence(p) for b, p in confidences.items()}
    distances = torch.zeros(4, 4)
    distances[0, 3], distances[1, 3], distances[2, 3] = 20.0, 10.0, 4.0
    score = {b: confidences[b] - lam * distances[i, 3].item() for i, b in enumerate((8, 6, 4))}
    expected = max(score, key=score.get)
    assert pick_teacher(settings, 3, logits, LABELS, distances) == expected


def test_a_tie_goes_to_the_higher_bit_width():
    scores = teacher_scores(torch.tensor([0.5, 0.7, 0.7]), torch.zeros(3), 0.001)
    assert choose_teacher([8, 6, 4], scores) == 6


def test_fixed_teachers():
    logits = {b: logits_with_confidence(0.5) for b in (8, 6, 4)}
    for teacher, expected in (("highest", 8), ("next", 4), ("none", None)):
        settings = AdaptiveSettings(bits=(8, 6, 4, 2), teacher=teacher, swap=False)
        assert pick_teacher(settings, 3, logits, LABELS, None) == expected


def test_weight_distance_is_the_l2_norm_over_all_quantized_weights(model):
    widths = (8, 6, 4, 2)
    distances = weight_distances(model, widths)
    assert torch.equal(distances, distances.T) and torch.all(distances.diagonal() == 0)
    switching = [m for m in model.modules()
                 if getattr(getattr(m, "weight_quantizer", None), "bit_widths", None)]
    squared = sum(
        (m.weight_quantizer.quantize_at(m.weight, 8) - m.weight_quantizer.quantize_at(m.weight, 2))
        .detach().square().sum()
        for m in switching
    )
    assert distances[0, 3].item() == pytest.approx(squared.sqrt().item(), rel=1e-4)
    assert distances[0, 1] < distances[0, 3]  # 8 is nearer 6 than 2


def test_bit_distance():
    assert bit_distances((8, 4, 2)).tolist() == [[0, 4, 6], [4, 0, 2], [6, 2, 0]]
