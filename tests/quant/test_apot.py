"""RCF (APoT Eq. 7), its alpha gradient (Eq. 8) and weight normalization (Eq. 9)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.errors import LowbitError
from lowbit.quant.apot import WEIGHT_NORMALIZATIONS, RCFQuantizer, normalize_weight, rcf_quantize
from lowbit.quant.project import project_to_levels
from lowbit.quant.registry import get_method


def test_alpha_gradient_is_eq8_on_hand_built_tensor():
    """Eq. 8: d(W_hat)/d(alpha) = Pi(W/alpha) - W/alpha inside, sign(W) outside."""
    levels = lowbit.levels("apot", 3, signed=True)  # {0, ±1/5... } scaled to max 1
    alpha = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.3, -0.9, 1.7, 2.5, -3.0, 0.0], dtype=torch.float64, requires_grad=True)
    out = rcf_quantize(w, alpha, levels, signed=True)
    upstream = torch.tensor([1.0, 2.0, -1.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    out.backward(upstream)

    scaled = w.detach() / 2.0
    projected = project_to_levels(scaled, levels)
    per_element = torch.where(scaled.abs() > 1, scaled.sign(), projected - scaled)
    assert per_element[3] == 1.0 and per_element[4] == -1.0  # the two outliers: sign(W)
    torch.testing.assert_close(alpha.grad, (upstream * per_element).sum())
    # Straight-through for W inside the range, nothing outside.
    torch.testing.assert_close(
        w.grad, upstream * torch.tensor([1.0, 1, 1, 0, 0, 1], dtype=torch.float64)
    )
    torch.testing.assert_close(out.detach(), 2.0 * projected)


def test_activations_are_clipped_from_above_only():
    levels = lowbit.levels("apot", 4)
    alpha = torch.tensor(8.0, requires_grad=True)
    x = torch.tensor([-1.0, 3.0, 8.0, 12.0], requires_grad=True)
    out = rcf_quantize(x, alpha, levels, signed=False)
    out.sum().backward()
    assert out[0] == 0 and out[3] == 8.0
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0]
    expected_alpha = (out[:3].detach() / 8 - x[:3].detach() / 8).sum() + 1.0  # 12 > alpha: +1
    torch.testing.assert_close(alpha.grad, expected_alpha)


@pytest.mark.parametrize("name", ["apot", "pot", "uniform"])
@pytest.mark.parametrize("signed", [False, True])
def test_gradients_equal_the_naive_autograd_formulation(name, signed):
    """alpha * STE(Pi(clip(x/alpha))) differentiated by autograd gives Eq. 8 as well."""
    levels = lowbit.levels(name, 4, signed).double()
    x = (torch.randn(5_000, dtype=torch.float64) * 2).requires_grad_()
    alpha = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(5_000, dtype=torch.float64)
    rcf_quantize(x, alpha, levels, signed=signed).backward(grad)
    ours = (x.grad.clone(), alpha.grad.clone())

    x.grad = alpha.grad = None
    u = (x / alpha).clamp(-1 if signed else -float("inf"), 1)
    ste = u + (project_to_levels(u.detach(), levels) - u).detach()
    (alpha * ste).backward(grad)
    torch.testing.assert_close(ours[0], x.grad)
    torch.testing.assert_close(ours[1], alpha.grad)


def test_weight_normalization_is_eq9():
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64) * 0.05 + 0.01
    n = normalize_weight(w)
    torch.testing.assert_close(n.mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)
    # Population std (1/I) plus eps in the denominator.
    expected = (w - w.mean()) / (((w - w.mean()) ** 2).mean().sqrt() + 1e-5)
    torch.testing.assert_close(n, expected)


def test_weight_normalization_is_differentiated_through_mean_and_std():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(normalize_weight, (w,))


def test_detached_weight_normalization_is_the_apot_authors_eq9():
    """Eq. 9 as the authors' code computes it: unbiased std, no eps, mean and std constants."""
    w = (torch.randn(16, 8, 3, 3) * 0.05).requires_grad_()
    quantizer = RCFQuantizer("apot", 4, signed=True, alpha=3.0, normalize=True,
                             normalization="detached", rescale=False)
    n = normalize_weight(w, **WEIGHT_NORMALIZATIONS["detached"])
    torch.testing.assert_close(n, (w - w.mean()) / w.std(correction=1), rtol=0, atol=0)
    g = torch.randn_like(w)
    n.backward(g)
    torch.testing.assert_close(w.grad, g / w.detach().std())
    expected = rcf_quantize(n.detach(), quantizer.alpha, quantizer.levels, signed=True)
    torch.testing.assert_close(quantizer(w.detach()), expected)
    with pytest.raises(LowbitError, match="unknown weight normalization"):
        RCFQuantizer("apot", 4, signed=True, alpha=3.0, normalization="nope")


def _argmin_level(u, levels):
    """Brute force: the level with the smallest float |u - level|, the lower one on a tie."""
    return levels[(u[:, None] - levels[None, :]).abs().argmin(dim=1)]


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_divide_first_decides_by_float_distance_like_an_argmin(bits):
    """Eq. 7 computed as written (x / alpha, nearest unit level, times alpha), within a few
    ulps of every midpoint, where a rounded midpoint (1/8 and 1/6 -> 0.14583334) misleads."""
    levels = lowbit.levels("apot", bits, signed=False).float()
    mids = (levels[1:] + levels[:-1]) / 2
    steps = torch.arange(-4, 5, dtype=torch.float32)
    u = (mids[:, None] + steps[None, :] * mids[:, None].abs() * 2**-24).flatten()
    u = torch.cat([u, torch.rand(1000) * 1.5])
    alpha = torch.tensor(1.0)
    ours = RCFQuantizer("apot", bits, signed=False, alpha=1.0, divide_first=True)(u)
    torch.testing.assert_close(ours, _argmin_level(u, levels) * alpha, rtol=0, atol=0)


def test_divide_first_ties_go_toward_zero_and_signed_data_keep_their_sign():
    """Ternary 2-bit weights at +-alpha/2 round to 0 (half-to-even), unlike the default rule."""
    x = torch.tensor([0.75, -0.75, 0.76, -0.76, 2.0, -2.0])
    ours = RCFQuantizer("apot", 2, signed=True, alpha=1.5, divide_first=True)(x)
    assert ours.tolist() == [0.0, 0.0, 1.5, -1.5, 1.5, -1.5]
    assert RCFQuantizer("apot", 2, signed=True, alpha=1.5)(x)[0] == 1.5


def test_weight_quantizer_normalizes_quantizes_then_rescales():
    """Eq. 9 then Eq. 7, times Eq. 9's std + eps (the float weight's scale is kept)."""
    quantizer = get_method("apot").weight_quantizer(4)
    w = torch.randn(8, 4, 3, 3) * 0.1
    divisor = w.std(correction=0) + 1e-5
    expected = rcf_quantize(normalize_weight(w), quantizer.alpha, quantizer.levels, signed=True)
    torch.testing.assert_close(quantizer(w), expected * divisor)
    literal = RCFQuantizer("apot", 4, signed=True, alpha=3.0, normalize=True, rescale=False)
    torch.testing.assert_close(literal(w), expected)


def test_rescaled_weights_leave_batchnorm_training_unchanged(conv_batchnorm_step):
    """A BatchNorm in training mode after the conv removes the rescale: same loss and the same
    gradients for the weight and alpha as the paper's literal output."""
    rescaled, literal = (
        conv_batchnorm_step(RCFQuantizer("apot", 4, signed=True, alpha=3.0, normalize=True,
                                         rescale=rescale, clip_input_gradient=False))
        for rescale in (True, False)
    )
    for ours, paper in zip(rescaled, literal):
        torch.testing.assert_close(ours, paper, rtol=1e-4, atol=1e-5)


def test_apot_weight_gradient_is_straight_through_beyond_alpha():
    """APoT §2.5: "we use STE when computing the gradients of weights, dW_hat/dW_tilde = 1",
    also for normalized weights beyond +-alpha (Eq. 8's clipped STE is for activations); alpha
    keeps Eq. 8 (sign(W) outside)."""
    quantizer = get_method("apot").weight_quantizer(2, normalize=False)
    with torch.no_grad():
        quantizer.alpha.fill_(1.0)
    w = torch.tensor([0.2, -0.7, 1.5, -2.5], requires_grad=True)
    quantizer(w).backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert w.grad.tolist() == [1.0, 2.0, 3.0, 4.0]
    # Ternary levels {-1, 0, 1}: Pi(0.2) - 0.2, Pi(-0.7) + 0.7, then sign(W) outside.
    expected = 1.0 * (0 - 0.2) + 2.0 * (-1 + 0.7) + 3.0 * 1 + 4.0 * -1
    torch.testing.assert_close(quantizer.alpha.grad, torch.tensor(expected))
    activation = get_method("apot").input_quantizer(2)
    x = torch.tensor([0.5, 9.0], requires_grad=True)
    activation(x).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]  # activations keep the clipped STE (Eq. 8)


def test_quantizer_state_dict_holds_only_alpha_and_loads_across_bits():
    """Progressive init 5 -> 4 -> 3 -> 2: the level set is not part of the state."""
    four = RCFQuantizer("apot", 4, signed=False, alpha=6.0)
    three = RCFQuantizer("apot", 3, signed=False, alpha=8.0)
    assert list(four.state_dict()) == ["alpha"]
    three.load_state_dict(four.state_dict())
    assert three.alpha.item() == 6.0 and three.levels.numel() == 8


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["apot", "pot", "uniform"]),
    bits=st.integers(2, 6),
    signed=st.booleans(),
    alpha=st.floats(0.1, 10.0),
    values=st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=64),
)
def test_outputs_lie_in_alpha_levels_and_requantizing_changes_nothing(
    name, bits, signed, alpha, values
):
    levels = lowbit.levels(name, bits, signed).double()
    x = torch.tensor(values, dtype=torch.float64)
    a = torch.tensor(alpha, dtype=torch.float64)
    once = rcf_quantize(x, a, levels, signed=signed)
    grid = a * levels
    assert torch.isclose(once[:, None], grid, rtol=1e-12, atol=0).any(dim=1).all()
    torch.testing.assert_close(
        rcf_quantize(once, a, levels, signed=signed), once, rtol=1e-12, atol=1e-12
    )


def test_unknown_alpha_gradient_or_clipping_is_one_error():
    levels = lowbit.levels("apot", 4, True)
    with pytest.raises(LowbitError, match="unknown alpha gradient 'eq12'; use one of: rcf, pact"):
        rcf_quantize(torch.ones(3), torch.tensor(1.0), levels, alpha_gradient="eq12")
    with pytest.raises(LowbitError, match="unknown clipping 'learned'"):
        RCFQuantizer("apot", 4, True, 3.0, clipping="learned")
