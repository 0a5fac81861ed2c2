"""UniQ's learnable symmetric quantizer (Eq. 3-6), its initialization and 1-bit case."""

import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import LowbitError
from lowbit.nn.calibrate import calibrate
from lowbit.quant.init import optimal_step_size
from lowbit.quant.registry import get_method
from lowbit.quant.uniq import (
    LearnedStepQuantizer,
    learned_step_quantize,
    uniq_input_quantizer,
    uniq_weight_quantizer,
)


def _eq3(x, step, n):
    """UniQ Eq. 3 as printed: round(clip_N((x + alpha) / step)) * step - alpha."""
    alpha = step * (n - 1) / 2
    return torch.round(torch.clamp((x + alpha) / step, 0, n - 1)) * step - alpha


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_eq3_levels_are_symmetric_without_zero(bits):
    """Eq. 3-4: N = 2^b levels (2i - N + 1) * step / 2, alpha = step (N - 1) / 2, no zero."""
    n = 2**bits
    q = uniq_weight_quantizer(bits, init=0.5, per_channel=False)
    x = torch.linspace(-2 * n, 2 * n, 20_001)
    levels = torch.unique(q(x).detach())
    expected = (2 * torch.arange(n) - n + 1) * 0.5 / 2
    torch.testing.assert_close(levels, expected)
    assert 0.0 not in levels.tolist()


def test_forward_equals_printed_eq3_away_from_decision_levels():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 2
    for bits in (1, 2, 3):
        q = uniq_weight_quantizer(bits, init=0.7, per_channel=False)
        torch.testing.assert_close(q(x).detach(), _eq3(x, 0.7, 2**bits))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_weights_are_exactly_symmetric(bits):
    """Q(-x) = -Q(x) bit for bit, also on the decision levels (x = k * step) and at +-0."""
    q = uniq_weight_quantizer(bits, init=0.25, per_channel=False)
    random = torch.randn(50_000, generator=torch.Generator().manual_seed(bits))
    ties = torch.arange(-40, 41) * 0.25
    x = torch.cat([random, ties, torch.tensor([0.0, -0.0])])
    assert torch.equal(q(-x), -q(x))


def test_one_bit_weights_binarize_to_plus_minus_half_step():
    """N = 2: Q_w(x) = sign(x) * step / 2 (UniQ's binarization, Eq. 4 with q in {-1, 1})."""
    w = torch.randn(4, 9)
    q = uniq_weight_quantizer(1)
    out = q(w).detach()
    half = (q.step.detach() / 2).view(4, 1)
    torch.testing.assert_close(out, torch.sign(w) * half)


@pytest.mark.filterwarnings("ignore:an unsigned")
def test_one_bit_activations_are_zero_or_step():
    q = uniq_input_quantizer(1, init=1.0)
    x = torch.tensor([-1.0, 0.2, 0.49, 0.51, 0.9, 7.0])
    assert q(x).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.filterwarnings("ignore:an unsigned")
def test_eq5_activation_levels_keep_zero():
    """Eq. 5: round(clip_N(x / step)) * step, levels 0, step, ..., (N - 1) step."""
    q = uniq_input_quantizer(2, init=0.5)
    x = torch.tensor([-3.0, 0.0, 0.24, 0.26, 0.8, 1.4, 9.0])
    assert q(x).tolist() == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 1.5]


def test_step_gradient_is_eq6_inside_and_outside():
    """Eq. 6: dQ_w/dstep = -x/step + round(x/step - 1/2) + 1/2 for |x| < alpha; outside it is
    sign(x) * (N - 1) / 2 = sign(x) * alpha / step, the derivative of Q_w = sign(x) * alpha
    (Eq. 6 prints sign(x) * alpha, which is alpha / step off: alpha itself is step-dependent)."""
    n, s = 4, 0.5  # alpha = 0.75
    x = torch.tensor([0.1, -0.3, 0.6, -0.7, 0.74, 2.0, -1.0, 0.8], dtype=torch.float64)
    upstream = torch.tensor([1.0, 2.0, -1.0, 0.5, 3.0, 1.5, -2.0, 0.25], dtype=torch.float64)
    step = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    xg = x.clone().requires_grad_()
    learned_step_quantize(xg, step, -(n - 1) / 2, (n - 1) / 2, symmetric=True).backward(upstream)

    inside = x.abs() < 0.75
    eq6_inside = -x / s + torch.round(x / s - 0.5) + 0.5
    eq6 = torch.where(inside, eq6_inside, torch.sign(x) * (n - 1) / 2)
    assert inside.tolist() == [True] * 5 + [False] * 3
    torch.testing.assert_close(step.grad, (upstream * eq6).sum())
    torch.testing.assert_close(xg.grad, upstream * inside)  # straight-through inside only


def test_activation_step_gradient_is_eq6_analogue():
    """dQ_a/dstep = round(x/step) - x/step inside (0, (N-1) step), N - 1 at and above the
    upper bound, 0 at and below zero (the bounds count as clipped, Eq. 6's |x| < alpha)."""
    s = 0.5
    x = torch.tensor([-1.0, 0.1, 0.7, 1.2, 1.5, 4.0], dtype=torch.float64)
    step = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    xg = x.clone().requires_grad_()
    learned_step_quantize(xg, step, 0.0, 3.0).backward(torch.ones_like(x))
    expected = [0.0, 0.0 - 0.2, 1.0 - 1.4, 2.0 - 2.4, 3.0, 3.0]
    torch.testing.assert_close(step.grad, torch.tensor(expected, dtype=torch.float64).sum())
    assert xg.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("per_channel", [False, True])
def test_gradients_equal_plain_autograd_with_round_ste(per_channel):
    """The custom Function's gradients equal autograd through Eq. 3 with STE rounding."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(6, 3, 3, 3, generator=gen, dtype=torch.float64)
    q = uniq_weight_quantizer(2, per_channel=per_channel).double()
    q(w).backward(upstream)
    ours = (w.grad.clone(), q.step.grad.clone())

    w.grad = None
    step = q.step.detach().clone().requires_grad_()
    s = step.view(-1, 1, 1, 1) if per_channel else step
    numel = w[0].numel() if per_channel else w.numel()
    g = 1 / numel**0.5  # LSQ's gradient scale, Q_P = max(2^(b-1) - 1, 1) = 1 at 2 bits
    s = s * g + (s - s * g).detach()
    alpha = s * 3 / 2
    u = torch.clamp((w + alpha) / s, 0, 3)
    u = u + (torch.round(u) - u).detach()
    (u * s - alpha).backward(upstream)
    torch.testing.assert_close(ours[0], w.grad)
    torch.testing.assert_close(ours[1], step.grad)


def test_step_gradient_scale_is_per_channel_numel():
    """Kernel-wise: g = 1/sqrt(elements per channel * Q_P), Q_P = 2^(b-1) - 1 = 3 at 3 bits."""
    w = torch.randn(5, 2, 3, 3)
    q = uniq_weight_quantizer(3)
    q(w).sum().backward()
    step = q.step.detach().clone().view(-1, 1, 1, 1).requires_grad_()
    learned_step_quantize(w, step, -3.5, 3.5, symmetric=True).sum().backward()
    torch.testing.assert_close(q.step.grad, step.grad.view(-1) / (18 * 3) ** 0.5)


def test_kernel_wise_steps_follow_each_channel_std():
    w = torch.randn(3, 8, 3, 3) * torch.tensor([0.01, 1.0, 10.0]).view(3, 1, 1, 1)
    q = uniq_weight_quantizer(4)
    q(w)
    expected = optimal_step_size(16, "weight") * w.reshape(3, -1).std(dim=1, correction=0)
    torch.testing.assert_close(q.step.detach(), expected)
    layer_wise = uniq_weight_quantizer(4, per_channel=False)
    layer_wise(w)
    assert layer_wise.step.shape == ()


def test_kernel_wise_works_on_a_one_output_channel_layer():
    """A conv with one output channel (the authors' code asserts > 1) quantizes and trains."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 1, 3), nn.Flatten())
    lowbit.quantize(model, "uniq", bits=2, first_last_bits=2)
    x = torch.randn(2, 3, 8, 8)
    model(x).sum().backward()
    quantizer = model[2].weight_quantizer
    assert quantizer.step.shape == (1,)
    assert quantizer.step.grad.shape == (1,)
    assert model[2].weight.grad is not None


def test_table_5_inits_are_options():
    """UniQ Table 5: fixed 0.1 / 0.2, LSQ's 2 E|W| / sqrt(Q_P) and the MSE init (default)."""
    w = torch.randn(4, 16)
    fixed = uniq_weight_quantizer(2, init=0.2)
    fixed(w)
    torch.testing.assert_close(fixed.step.detach(), torch.full((4,), 0.2))
    lsq = uniq_weight_quantizer(3, init="lsq")
    lsq(w)
    torch.testing.assert_close(lsq.step.detach(), 2 * w.abs().mean(dim=1) / 3**0.5)
    method = get_method("uniq")
    assert method.input_quantizer(2, init=0.1).init == 0.1


def test_activation_step_is_max_of_per_batch_estimates_over_calibration():
    """§4.2: step_a = step_a^u * sqrt(2 E[X^2]) per batch; the maximum over K batches."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    lowbit.quantize(model, "uniq", bits=2, first_last_bits=2)
    batches = [torch.randn(16, 4) * scale for scale in (1.0, 3.0, 2.0)]
    calibrate(model, batches, max_batches=3)
    hidden = [model[1](model[0](b)) for b in batches]
    unit = optimal_step_size(4, "activation")
    estimates = [unit * (2 * h.square().mean()).sqrt() for h in hidden]
    quantizer = model[2].input_quantizer
    torch.testing.assert_close(quantizer.step.detach(), max(estimates).detach())
    weight_step = model[0].weight_quantizer.step.detach()
    expected = optimal_step_size(4, "weight") * model[0].weight.std(dim=1, correction=0)
    torch.testing.assert_close(weight_step, expected.detach())

    model.train()
    model(batches[0]).sum().backward()  # training has begun: calibration is over
    before = quantizer.step.detach().clone()
    calibrate(model, [batches[1] * 100], max_batches=1)
    assert torch.equal(quantizer.step.detach(), before)


def test_first_forward_initializes_an_uncalibrated_quantizer():
    q = uniq_input_quantizer(4)
    x = torch.randn(1000).relu()
    q(x)
    expected = optimal_step_size(16, "activation") * (2 * x.square().mean()).sqrt()
    torch.testing.assert_close(q.step.detach(), expected)
    q(x * 50)  # later batches do not move it
    torch.testing.assert_close(q.step.detach(), expected)


def test_state_dict_round_trip_keeps_the_loaded_step():
    w = torch.randn(6, 5)
    trained = uniq_weight_quantizer(2)
    trained(w)
    with torch.no_grad():
        trained.step.mul_(1.7)
    fresh = uniq_weight_quantizer(2)
    fresh.load_state_dict(trained.state_dict())
    fresh(w * 10)  # no re-initialization from data
    torch.testing.assert_close(fresh.step, trained.step)


def test_optimizer_built_before_initialization_trains_the_step():
    q = uniq_weight_quantizer(2)
    optimizer = torch.optim.SGD(q.parameters(), lr=0.1, momentum=0.9)
    w = torch.randn(3, 7)
    q(w).square().sum().backward()
    before = q.step.detach().clone()
    optimizer.step()
    assert q.step.shape == (3,) and not torch.equal(q.step.detach(), before)


def test_negative_inputs_to_an_activation_quantizer_warn_once():
    q = uniq_input_quantizer(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q.observe(torch.randn(1000))
        q.observe(torch.randn(1000))
        q(torch.randn(1000))
    assert len(caught) == 1
    assert "can be negative" in str(caught[0].message)
    quiet = uniq_input_quantizer(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.observe(torch.randn(1000).relu())


@pytest.mark.parametrize("bits", [0, 9, -1, 2.0, True])
def test_bad_bits_are_user_errors(bits):
    with pytest.raises(LowbitError, match="bits"):
        uniq_weight_quantizer(bits)
    with pytest.raises(LowbitError, match="bits"):
        uniq_input_quantizer(bits)


@pytest.mark.parametrize("bits", [0, 9])
def test_quantize_rejects_bits_outside_1_to_8(bits):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    with pytest.raises(LowbitError, match="1..8"):
        lowbit.quantize(model, "uniq", bits=bits)


@pytest.mark.parametrize("init", ["max", -0.1, 0, True])
def test_bad_init_is_a_user_error(init):
    with pytest.raises(LowbitError, match="init"):
        uniq_weight_quantizer(2, init=init)


def test_per_channel_activations_are_refused():
    with pytest.raises(LowbitError, match="layer-wise"):
        LearnedStepQuantizer(2, "unsigned", per_channel=True)


def test_one_bit_model_trains_a_step():
    """The 1-bit path end to end: quantize, forward, backward, every step gets a gradient."""
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    lowbit.quantize(model, "uniq", bits=1)
    model(torch.randn(5, 6)).sum().backward()
    middle = model[2]
    assert torch.unique(middle.weight_quantizer(middle.weight)[0]).numel() == 2
    assert middle.weight_quantizer.step.grad is not None
    assert middle.input_quantizer.step.grad is not None


def test_loading_another_bit_widths_step_reinitializes_it():
    """Issue 12 item 6 (UniQ §4.2, Table 1: each bit-width starts from its own MSE-optimal
    step): a 1-bit quantizer loaded from a 2-bit one's state re-initializes from data instead
    of keeping the 2-bit step (0.350 instead of 0.659 for activations before the change).
    The same bit-width keeps its learned step."""
    torch.manual_seed(0)
    x = torch.randn(4096).relu()
    w = torch.randn(16, 8, 3, 3)
    two_input, two_weight = uniq_input_quantizer(2), uniq_weight_quantizer(2)
    two_input.observe(x)
    two_weight.observe(w)
    one_input, one_weight = uniq_input_quantizer(1), uniq_weight_quantizer(1)
    one_input.load_state_dict(two_input.state_dict())
    one_weight.load_state_dict(two_weight.state_dict())
    assert not one_input.initialized and not one_weight.initialized
    one_input.observe(x)
    one_weight.observe(w)
    expected_input = optimal_step_size(2, "activation") * (2 * x.square().mean()).sqrt()
    torch.testing.assert_close(one_input.step.detach(), expected_input)
    expected_weight = optimal_step_size(2, "weight") * w.reshape(16, -1).std(1, correction=0)
    torch.testing.assert_close(one_weight.step.detach(), expected_weight)
    again = uniq_input_quantizer(2)
    again.load_state_dict(two_input.state_dict())
    assert again.initialized and again.step.item() == two_input.step.item()


def test_state_dicts_written_before_step_bits_still_load():
    """Checkpoints from before the step_bits buffer have only the step: taken as learned at
    the quantizer's own bit-width (strict loading does not fail on the missing key)."""
    source = uniq_input_quantizer(2)
    source.observe(torch.rand(100))
    old = {key: value for key, value in source.state_dict().items() if key != "step_bits"}
    target = uniq_input_quantizer(2)
    target.load_state_dict(old)
    assert target.initialized and target.step.item() == source.step.item()
