"""The shared straight-through gradients: closed clipping ranges, exact at the bounds."""

import pytest
import torch

from lowbit.quant.ste import (
    clip_backward,
    clip_backward_formula,
    scale_gradient_sum,
    straight_through,
)


def _around(value: float, dtype: torch.dtype) -> torch.Tensor:
    """``value`` and its two neighbours in ``dtype``."""
    v = torch.tensor(value, dtype=dtype)
    return torch.stack([torch.nextafter(v, v - 1), v, torch.nextafter(v, v + 1)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("low", [None, 0.0, -0.7])
def test_gradient_passes_on_the_closed_range_only(dtype, low):
    """APoT Eq. 8 / UniQ Eq. 6: the input gets the gradient for low <= x <= high, the bounds
    included, and nothing one step beyond them."""
    high = torch.tensor(0.7, dtype=dtype)
    low_t = None if low is None else torch.tensor(low, dtype=dtype)
    edges = [_around(0.7, dtype), _around(-0.7 if low is None else low, dtype)]
    x = torch.cat([*edges, torch.tensor([0.3, -5.0], dtype=dtype)])
    grad = torch.arange(1, x.numel() + 1, dtype=dtype)
    got = straight_through(grad, x, low_t, high)
    inside = (x <= high) if low_t is None else (x >= low_t) & (x <= high)
    assert torch.equal(got, torch.where(inside, grad, 0))
    assert torch.equal(clip_backward(grad, x, x, low_t, high)[0], got)  # the operator, too
    assert got[1] == grad[1] and got[2] == 0  # high itself passes, the next value does not
    if low is not None:
        assert got[4] == grad[4] and got[3] == 0  # and so does low, not the value below it


@pytest.mark.parametrize("closed", [True, False])
@pytest.mark.parametrize("scale_gradient", ["rounding", "upper", "bounds"])
def test_operator_equals_its_formula(closed, scale_gradient):
    """``lowbit::clip_backward`` (on the CPU: the fused kernel where it serves) gives its
    formula's input gradient bitwise and its scale gradient up to float32 summation noise,
    with scalar bounds (exactly on them too) and per-channel ones."""
    x = torch.randn(4, 3, 5, 5) * 2
    x[0, 0, 0, :2] = torch.tensor([-1.5, 1.25])
    grad, out = torch.randn_like(x), x.clamp(-1.5, 1.25).mul(4).round().div(4)
    per_channel = torch.rand(4, 1, 1, 1) + 0.5
    for low, high in ((torch.tensor(-1.5), torch.tensor(1.25)), (-per_channel, per_channel)):
        args = (grad, x, out, low, high, closed, high, scale_gradient)
        got, expected = clip_backward(*args), clip_backward_formula(*args)
        assert torch.equal(got[0], expected[0])
        torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-4)
        inside = (x >= low) & (x <= high) if closed else (x > low) & (x < high)
        assert torch.equal(got[0], torch.where(inside, grad, 0.0))


def test_per_channel_scale_gradient_is_summed_per_channel():
    g, x = torch.randn(2, 4, 3, 3, 3, dtype=torch.float64)
    out = x.clamp(-1, 1).round()
    scale = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64).view(4, 1, 1, 1)
    gx, grad_scale = clip_backward(g, x, out, -scale, scale, scale=scale)
    expected = torch.stack([
        ((g[c] * out[c]).sum() - (gx[c] * x[c]).sum()) / scale[c] for c in range(4)
    ])
    torch.testing.assert_close(grad_scale, expected.view(4, 1, 1, 1))
    for rule, sign in (("upper", (x > scale).double()),
                       ("bounds", (x > scale).double() - (x < -scale).double())):
        _, grad_scale = clip_backward(g, x, out, -scale, scale, scale=scale, scale_gradient=rule)
        torch.testing.assert_close(grad_scale, (g * sign).sum((1, 2, 3), keepdim=True))


def test_scale_gradient_is_two_dot_products():
    g, x, out = torch.randn(3, 100, dtype=torch.float64)
    gx = straight_through(g, x, None, torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(scale_gradient_sum(g, gx, x, out), (g * out).sum() - (gx * x).sum())
