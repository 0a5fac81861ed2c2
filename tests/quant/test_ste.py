"""The shared straight-through gradients: closed clipping ranges, exact at the bounds."""

import pytest
import torch

from lowbit.quant import ste
from lowbit.quant.ste import scale_gradient_sum, straight_through


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
    assert got[1] == grad[1] and got[2] == 0  # high itself passes, the next value does not
    if low is not None:
        assert got[4] == grad[4] and got[3] == 0  # and so does low, not the value below it


def test_fused_and_reference_paths_agree(monkeypatch):
    """The one-pass CPU kernel and the compare-and-select used on GPUs and under
    torch.compile give the same gradient, per-channel bounds included."""
    x = torch.randn(4, 3, 5, 5) * 2
    grad = torch.randn_like(x)
    low, high = torch.tensor(-1.5), torch.tensor(1.25)
    fused = straight_through(grad, x, low, high)
    monkeypatch.setattr(ste.torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(fused, straight_through(grad, x, low, high))
    per_channel = torch.rand(4, 1, 1, 1) + 0.5
    expected = torch.where((x >= -per_channel) & (x <= per_channel), grad, 0.0)
    assert torch.equal(straight_through(grad, x, -per_channel, per_channel), expected)


def test_scale_gradient_is_two_dot_products():
    g, x, out = torch.randn(3, 100, dtype=torch.float64)
    gx = straight_through(g, x, None, torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(scale_gradient_sum(g, gx, x, out), (g * out).sum() - (gx * x).sum())
