"""Dynamic block swapping (CoQuant supplement §3): each student block runs at the student's bits
with probability p_l, else at the teacher's."""

import pytest
import torch

from lowbit.adaptive import make_adaptive, set_bits
from lowbit.adaptive.swap import student_probabilities, swap_blocks, swap_forward
from lowbit.models import build_model


def test_probability_one_is_the_students_forward_and_zero_the_teachers(model, batch):
    images, _ = batch  # training mode: BatchNorm normalizes with the batch's statistics
    blocks = swap_blocks(model)
    student = set_bits(model, 2)(images)
    teacher = set_bits(model, 8)(images)
    torch.manual_seed(0)
    assert torch.equal(swap_forward(model, blocks, 2, 8, [1.0] * len(blocks), images), student)
    assert torch.equal(swap_forward(model, blocks, 2, 8, [0.0] * len(blocks), images), teacher)
    mixed = swap_forward(model, blocks, 2, 8, [0.0, 1.0, 0.0, 1.0], images)
    assert not torch.equal(mixed, student) and not torch.equal(mixed, teacher)
    assert [block[-1].bits for block in blocks] == [8, 2, 8, 2]


def test_probabilities_start_at_p1_and_rise_linearly_over_depth_and_training():
    assert student_probabilities(0.9, 0.0, 3) == pytest.approx([0.9, 0.95, 1.0])
    assert student_probabilities(0.5, 0.5, 2) == pytest.approx([0.75, 1.0])
    assert student_probabilities(0.7, 1.0, 4) == pytest.approx([1.0] * 4)
    assert student_probabilities(0.6, 0.0, 3, "flat") == pytest.approx([0.6] * 3)


def test_blocks_are_residual_blocks_with_their_batchnorms():
    """ResNet-20: the stem BatchNorm (its conv stays at 8 bits), nine basic blocks; the
    classifier stays at 8 bits and is in no block."""
    model = make_adaptive(build_model("resnet20", num_classes=10), [8, 4])
    blocks = swap_blocks(model)
    assert len(blocks) == 10
    assert blocks[0] == [model.bn1]
    downsampling = blocks[4]  # layer2.0: conv1, bn1, conv2, bn2, downsample conv + BN
    assert downsampling[-1] is model.layer2[0].downsample[1]
    assert sum(type(m).__name__ == "PACTQuantizer" for m in downsampling) == 3
