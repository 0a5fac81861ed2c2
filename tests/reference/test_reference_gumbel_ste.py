"""App. E of the SRQ paper (seed 004), "Gumbel-Softmax + multi-class STE", against its
float64 reference (``refeq_relaxed.gumbel_multiclass_gradients``: Eq. 1, Eq. 2's concrete
sample made hard, Eq. 3's multi-class straight-through backward).

The Gumbel noise is given, not averaged over: the formula takes it as an argument, and the
quantizer draws it from torch's generator (``-log(-log u)``, one ``u`` per element and
window point), so seeding torch reproduces it. At 2 bits with ``sigma = 0.4 alpha`` the
window (``K = 5`` points) covers the whole 4-point grid, so the reference's full grid and the
quantizer's window are the same points in the same order.
"""

from __future__ import annotations

import pytest
import torch
from refeq_relaxed import F64, grid_integers, gumbel_multiclass_gradients

from lowbit.quant.gumbel_ste import gumbel_multiclass_formula
from lowbit.quant.noise import counter_uniforms, element_counters
from lowbit.quant.srq import SRQQuantizer

ALPHA, SIGMA, TAU = 2.0**-3, 0.4 * 2.0**-3, 1.0


def _inputs(bits: int, n: int = 400, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    lo, hi = grid_integers(bits, True)
    x = (torch.rand(n, generator=generator, dtype=F64) * (hi - lo + 2) + lo - 1) * ALPHA
    grad_out = torch.randn(n, generator=generator, dtype=F64)
    return x, grad_out, generator


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_formula_matches_eq2_forward_and_eq3_backward(bits):
    """Value and the gradients of x, alpha and sigma over the whole grid, in float64."""
    x, grad_out, generator = _inputs(bits)
    lo, hi = grid_integers(bits, True)
    points = torch.arange(lo, hi + 1, dtype=F64).expand(x.numel(), -1)
    u = torch.rand(points.shape, generator=generator, dtype=F64)
    gumbel = -torch.log(-torch.log(u))
    expected = gumbel_multiclass_gradients(x, ALPHA, SIGMA, bits, gumbel, TAU, grad_out)

    x_in = x.clone().requires_grad_()
    alpha = torch.tensor(ALPHA, dtype=F64, requires_grad=True)
    sigma = torch.tensor(SIGMA, dtype=F64, requires_grad=True)
    out = gumbel_multiclass_formula(x_in, alpha, sigma, points, gumbel, TAU)
    out.backward(grad_out)
    got = (out.detach(), x_in.grad, alpha.grad, sigma.grad)
    for name, a, b in zip(("x_hat", "dL/dx", "dL/dalpha", "dL/dsigma"), got, expected):
        torch.testing.assert_close(a, b.reshape(a.shape), rtol=1e-10, atol=1e-12, msg=name)


def test_quantizer_draws_the_noise_it_is_seeded_with():
    """``SRQQuantizer(sampling="gumbel")`` in training: the same numbers from the module."""
    bits = 2
    x, grad_out, _ = _inputs(bits, seed=1)
    quantizer = SRQQuantizer(bits, alpha=ALPHA, sampling="gumbel", temperature=TAU).double()
    with torch.no_grad():
        quantizer.sigma.fill_(SIGMA)
    x_in = x.clone().requires_grad_()
    torch.manual_seed(7)
    out = quantizer(x_in)
    out.backward(grad_out)
    torch.manual_seed(7)  # the module draws one seed, then the counter-based uniforms
    seed = int(torch.randint(0, 2**63 - 1, ()))
    u = counter_uniforms(seed, element_counters(x), 2**bits).to(F64)
    expected = gumbel_multiclass_gradients(x, ALPHA, SIGMA, bits, -torch.log(-torch.log(u)),
                                           TAU, grad_out)
    got = (out.detach(), x_in.grad, quantizer.alpha.grad, quantizer.sigma.grad)
    for name, a, b in zip(("x_hat", "dL/dx", "dL/dalpha", "dL/dsigma"), got, expected):
        torch.testing.assert_close(a, b.reshape(a.shape), rtol=1e-10, atol=1e-12, msg=name)


def test_samples_leave_the_mode_and_evaluation_rounds():
    """The point of App. E's ablation: at tau = 1 some samples are not the nearest point
    (SRQ's mode), while evaluation is Algorithm 1's deterministic rounding."""
    x, _, _ = _inputs(3, n=2000)
    quantizer = SRQQuantizer(3, alpha=ALPHA, sampling="gumbel").double()
    nearest = torch.floor(x / ALPHA + 0.5).clamp(-4, 3) * ALPHA
    torch.manual_seed(0)
    sampled = quantizer(x)
    assert 0 < (sampled != nearest).double().mean() < 0.5
    torch.testing.assert_close(quantizer.eval()(x), nearest, rtol=0, atol=0)
