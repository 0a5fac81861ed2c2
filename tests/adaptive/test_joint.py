"""The joint step of CoQuant Algorithm 1: b1 on CE, every lower b on CE + KL(y_t || y_b), losses
summed, one backward; and the checks on the adaptive config section."""

import pytest
import torch
import torch.nn.functional as F

from lowbit.adaptive import AdaptiveSettings, JointObjective, distillation_loss, set_bits
from lowbit.adaptive.settings import adaptive_settings
from lowbit.cli import main
from lowbit.errors import LowbitError


def test_kl_term_is_zero_when_teacher_and_student_coincide():
    """Algorithm 1 line 11: KL(y_t || y_b) = 0 for y_t = y_b, positive otherwise."""
    logits = torch.randn(16, 10)
    assert distillation_loss(logits, logits).item() == 0.0
    assert distillation_loss(logits, torch.randn(16, 10)).item() > 0


def test_kl_gradient_reaches_only_the_student():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    distillation_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None


def test_switchable_bn_baseline_is_the_sum_of_cross_entropies(model, batch):
    """teacher = none, no swap: L = sum over b of CE(M_b(x), y), and the logits are b1's (eval
    mode: BatchNorm does not depend on which pass came first)."""
    model.eval()
    images, labels = batch
    settings = AdaptiveSettings(bits=(8, 6, 4, 2), teacher="none", swap=False)
    loss, logits = JointObjective(model, settings)(images, labels, 0.0)
    y = {b: set_bits(model, b)(images) for b in (8, 6, 4, 2)}
    expected = sum(F.cross_entropy(y[b], labels) for b in (8, 6, 4, 2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(logits, y[8])


@pytest.mark.parametrize("teacher", ["dynamic", "highest"])
def test_one_backward_trains_every_bit_width(model, batch, teacher):
    images, labels = batch
    settings = AdaptiveSettings(bits=(8, 6, 4, 2), teacher=teacher, swap=teacher == "dynamic",
                                p1=1.0)
    loss, logits = JointObjective(model, settings)(images, labels, 0.5)
    loss.backward()
    for bits in ("8", "6", "4", "2"):
        assert model[4].norms[bits].weight.grad.abs().sum() > 0, bits
    assert model[3].input_quantizer.alpha.grad.ne(0).all()
    assert model[3].weight_quantizer.bits == 8  # left at the highest bit-width


def test_joint_loss_equals_ce_plus_kl_per_bit_width(model, batch):
    """With p = 1 (no swap) and the highest bit-width as teacher, the loss is
    CE(y_8) + sum_b [CE(y_b) + KL(y_8 || y_b)], computed here by hand (eval mode: BatchNorm
    does not depend on which pass came first)."""
    model.eval()
    images, labels = batch
    settings = AdaptiveSettings(bits=(8, 4, 2), teacher="highest", swap=True, p1=1.0)
    loss, _ = JointObjective(model, settings)(images, labels, 0.0)
    y = {b: set_bits(model, b)(images) for b in (8, 4, 2)}
    expected = F.cross_entropy(y[8], labels) + sum(
        F.cross_entropy(y[b], labels) + distillation_loss(y[b], y[8]) for b in (4, 2)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"bits": []}, "empty"),
        ({"bits": [8, 9]}, "2..8"),
        ({"bits": [8, 1]}, "2..8"),
        ({"bits": "8"}, "list"),
        ({"bits": [8, 4], "lambda": -0.1}, "lambda"),
        ({"bits": [8, 4], "p1": 1.5}, "p1"),
        ({"bits": [8, 4], "p1": -0.1}, "p1"),
        ({"bits": [8, 4], "teacher": "best"}, "teacher"),
        ({"bits": [8, 4], "teacher": "none"}, "swap"),
    ],
)
def test_bad_adaptive_settings_are_clear_errors(section, message):
    with pytest.raises(LowbitError, match=message):
        adaptive_settings({"adaptive": section})


def test_bits_null_is_single_precision_training():
    assert adaptive_settings({"adaptive": {"bits": None}}) is None
    assert adaptive_settings({}) is None  # configs written before the section existed


@pytest.mark.parametrize("setting", ["bits=[]", "bits=[8,10]", "lambda=-1", "p1=2"])
def test_cli_bad_input_is_one_line(setting, tmp_path, capsys):
    settings = ["method=coquant", "adaptive.bits=[8,4]", f"adaptive.{setting}", f"out={tmp_path}"]
    assert main(["train", *(f"--set={s}" for s in settings)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("lowbit: error:")
    assert not any(tmp_path.iterdir())  # stopped before writing a run directory
