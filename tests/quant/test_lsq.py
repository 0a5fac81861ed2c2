"""LSQ (Esser et al. 2020): two's-complement weights, unsigned activations, gradient scale,
2 E|X| / sqrt(Q_P) init; the baseline of UniQ Table 4."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import LowbitError
from lowbit.nn.calibrate import calibrate
from lowbit.quant.registry import get_method
from lowbit.quant.uniq import (
    LearnedStepQuantizer,
    learned_step_quantize,
    lsq_input_quantizer,
    lsq_weight_quantizer,
)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_weight_codes_are_twos_complement(bits):
    """Codes -2^(b-1) .. 2^(b-1) - 1: one more negative level than positive ones."""
    q = lsq_weight_quantizer(bits)
    x = torch.linspace(-40, 40, 8001)
    q.initialize(torch.ones(4))  # 2 E|X| / sqrt(Q_P) = 2 / sqrt(Q_P)
    codes = torch.unique((q(x) / q.step).detach().round())
    expected = torch.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=torch.float32)
    assert torch.equal(codes, expected)


def test_weights_are_not_symmetric():
    """UniQ §3: the semi-symmetric range; -x reaches a level that x cannot mirror."""
    q = lsq_weight_quantizer(2)
    q.initialize(torch.ones(4))
    x = torch.tensor([10.0])
    assert not torch.equal(q(-x), -q(x))
    assert q(-x).item() == pytest.approx(-2 * q(x).item())  # -2 s versus +1 s


@pytest.mark.parametrize("bits", [2, 4])
def test_activation_codes_are_unsigned(bits):
    q = lsq_input_quantizer(bits)
    q.initialize(torch.ones(4))
    x = torch.linspace(0, 50, 5001)
    codes = torch.unique((q(x) / q.step).detach().round())
    assert torch.equal(codes, torch.arange(2**bits, dtype=torch.float32))


def test_step_gradient_with_lsq_gradient_scale():
    """LSQ: dQ/ds = round(x/s) - x/s inside, -Q_N or Q_P outside, times g = 1/sqrt(n Q_P)."""
    x = torch.tensor([0.3, -0.7, 1.1, -2.6, 3.0, -0.1])
    q = lsq_weight_quantizer(3)  # Q_N = 4, Q_P = 3
    q.initialize(torch.full((4,), 0.25 * 3**0.5))  # step = 2 E|X| / sqrt(3) = 0.5
    torch.testing.assert_close(q.step.detach(), torch.tensor(0.5))
    q(x).sum().backward()
    y = x / 0.5
    inside = (y >= -4) & (y <= 3)
    per_element = torch.where(inside, torch.round(y) - y, torch.clamp(y, -4, 3))
    assert inside.tolist() == [True, True, True, False, False, True]
    g = 1 / (x.numel() * 3) ** 0.5
    torch.testing.assert_close(q.step.grad, g * per_element.sum())


def test_activation_gradient_scale_uses_two_to_the_b_minus_one():
    x = torch.rand(4, 25) * 3
    q = lsq_input_quantizer(2)
    q(x).sum().backward()
    step = q.step.detach().clone().requires_grad_()
    learned_step_quantize(x, step, 0, 3).sum().backward()
    torch.testing.assert_close(q.step.grad, step.grad / (100 * 3) ** 0.5)


def test_init_is_two_mean_abs_over_sqrt_qp():
    w = torch.randn(8, 4, 3, 3)
    q = lsq_weight_quantizer(4)
    q(w)
    torch.testing.assert_close(q.step.detach(), 2 * w.abs().mean() / 7**0.5)


def test_activation_init_is_max_over_calibration_batches():
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    lowbit.quantize(model, "lsq", bits=2, first_last_bits=2)
    batches = [torch.randn(8, 3) * scale for scale in (1.0, 4.0, 2.0)]
    calibrate(model, batches, max_batches=3)
    estimates = [2 * model[1](model[0](b)).abs().mean() / 3**0.5 for b in batches]
    torch.testing.assert_close(model[2].input_quantizer.step.detach(), max(estimates).detach())


def test_one_bit_weights_are_refused():
    """One two's-complement bit holds only the sign: LSQ weights need 2 bits (UniQ Table 4)."""
    with pytest.raises(LowbitError, match="2..8"):
        lsq_weight_quantizer(1)
    assert get_method("lsq").min_bits == 2


@pytest.mark.parametrize("bits", [0, 9])
def test_bad_bits_are_user_errors(bits):
    with pytest.raises(LowbitError, match="bits"):
        lsq_input_quantizer(bits)


def test_mse_init_is_refused_on_the_twos_complement_grid():
    with pytest.raises(LowbitError, match="MSE"):
        LearnedStepQuantizer(2, "signed", init="mse")


def test_two_bit_model_runs_forward_and_backward():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16, 2))
    lowbit.quantize(model, "lsq", bits=2)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    assert model[2].weight_quantizer.step.grad is not None
    assert model[2].input_quantizer.step.grad is not None
