"""lloyd (APoT Table 3's "a non-uniform quantizer using Lloyd algorithm") against float64
references: the levels it fits are a Lloyd-Max fixed point of the values RCF projects (every
level the mean of its cell), and on those levels it is Eq. 7 with Eq. 8's gradients (Eq. 13a
for a set whose largest level is below 1)."""

from __future__ import annotations

import pytest
import torch
from refeq_apot import lloyd_cell_means, rcf_on_levels
from refeq_battery import check_against_reference, generator_for, gradient, make_tensor
from test_reference_apot import SHAPE_IN, SHAPE_W

import lowbit

BITS = [2, 3, 4]


def fitted(quantizer, x: torch.Tensor) -> torch.Tensor:
    """Fit ``quantizer`` to ``x`` (calibration) and freeze it (evaluation mode: no refit)."""
    quantizer.observe(x)
    quantizer.eval()
    return quantizer.levels.detach().double().clone()


def check_fixed_point(values: torch.Tensor, levels: torch.Tensor, alpha: float) -> None:
    torch.testing.assert_close(lloyd_cell_means(values, levels), levels, rtol=0,
                               atol=1e-6, msg=lambda m: f"not a Lloyd fixed point: {m}")
    assert levels.abs().max() <= 1.0 and alpha > 0


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("bits", BITS)
def test_lloyd_input_quantizer(bits, signed):
    """Inputs: 2^b levels fit to clip(x / alpha) (negatives to the lowest level, unsigned);
    signed inputs by magnitude, mirrored (the fixed point of the magnitudes)."""
    q = lowbit.get_method("lloyd").input_quantizer(bits, signed=signed, alpha=1.7)
    gen = generator_for("lloyd", bits, signed, "input")
    x, _ = make_tensor(SHAPE_IN, 1.7, gen)
    levels = fitted(q, x)
    assert levels.numel() == 2**bits
    u = (x.double() / 1.7).clamp(max=1.0)
    if signed:
        check_fixed_point(u.abs().clamp(max=1.0), levels[levels.numel() // 2:], 1.7)
        torch.testing.assert_close(levels, -levels.flip(0))
    else:
        check_fixed_point(u.clamp(min=0.0), levels, 1.7)

    def fn(v, p):
        return rcf_on_levels(v, p["alpha"], levels, 1.0, signed)

    check_against_reference(
        q, fn, x, gradient(x.shape, gen), {"alpha": torch.tensor(1.7)}, 1.7,
        f"lloyd {bits}-bit input",
    )


@pytest.mark.parametrize("bits", BITS)
def test_lloyd_weight_quantizer_without_clipping(bits):
    """Weights with alpha = max|W| (Table 3's Lloyd row without RCF): nothing clipped, levels
    fit to W / max|W| by magnitude, identity gradient to W (§2.5)."""
    q = lowbit.get_method("lloyd").weight_quantizer(bits, normalize=False, clipping="max")
    gen = generator_for("lloyd", bits, "weight")
    x, _ = make_tensor(SHAPE_W, 0.1, gen)
    levels = fitted(q, x)
    top = float(x.abs().max())
    check_fixed_point(x.double().abs() / top, levels[levels.numel() // 2:], top)

    def fn(v, p):
        return rcf_on_levels(v, torch.tensor(top, dtype=v.dtype), levels, 1.0, True,
                             clip_input_gradient=False)

    check_against_reference(q, fn, x, gradient(x.shape, gen), {}, top,
                            f"lloyd {bits}-bit weight")
