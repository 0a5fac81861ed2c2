"""How the APoT family sets alpha (``clipping``), against float64 references written from the
paper: RCF's gradient (Eq. 8) and PACT's (App. A.1, Eq. 11) on the same levels and the same
forward (Eq. 7), and no clipping at all, alpha = max|W| (Table 3, "RCF" column's cross)."""

from __future__ import annotations

import pytest
import torch
from refeq_apot import pact_clip, rcf, rcf_margin
from refeq_battery import (
    assert_agrees,
    check_against_reference,
    clean,
    compare,
    generator_for,
    gradient,
    make_tensor,
    place,
    run_library,
    run_reference,
    set_parameters,
)
from test_reference_apot import SHAPE_IN, SHAPE_W, exact_alpha, tie_values

import lowbit

# A bit-width of each parity per level set: Eq. 5 / Eq. 6 and the search projection (PoT 6).
CASES = [("apot", 3), ("apot", 4), ("pot", 6), ("uniform", 5)]
GRADIENTS = {"rcf": rcf, "pact": pact_clip}  # Eq. 8, Eq. 11


def projection_case(q, method, bits, signed, shape, clip_input_gradient, gen, reference):
    """``q`` at an exact alpha on a tensor with exact ties and values beyond the range,
    against ``reference`` (forward, input gradient, alpha gradient)."""
    alpha = exact_alpha(method, bits, signed)
    set_parameters(q, {"alpha": torch.tensor(alpha)})
    x, fixed = make_tensor(shape, alpha, gen)
    ties = tie_values(method, bits, signed, alpha, gen)
    place(x, fixed, torch.randperm(x.numel(), generator=gen)[: len(ties)].tolist(), ties)
    x = clean(x, fixed, lambda v: rcf_margin(v, alpha, method, bits, signed), alpha, gen)

    def fn(v, p):
        return reference(v, p["alpha"], method, bits, signed,
                         clip_input_gradient=clip_input_gradient)

    check_against_reference(
        q, fn, x, gradient(x.shape, gen), {"alpha": torch.tensor(alpha)}, alpha,
        f"{method} {bits}-bit",
    )


@pytest.mark.parametrize("clipping", sorted(GRADIENTS))
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("method,bits", CASES)
def test_input_alpha_gradient_eq8_or_eq11(method, bits, signed, clipping):
    """Inputs: the same Eq. 7 forward; alpha's gradient is Eq. 8 (``Pi(x/alpha) - x/alpha``
    inside, ``sign(x)`` outside) with RCF and Eq. 11 (0 inside, ``sign(x)`` outside) with
    PACT's clipping; unsigned data are clipped from above only."""
    q = lowbit.get_method(method).input_quantizer(bits, signed=signed, clipping=clipping)
    gen = generator_for(method, bits, signed, clipping, "input")
    projection_case(q, method, bits, signed, SHAPE_IN, True, gen, GRADIENTS[clipping])


@pytest.mark.parametrize("clipping", sorted(GRADIENTS))
@pytest.mark.parametrize("method,bits", CASES)
def test_weight_alpha_gradient_eq8_or_eq11(method, bits, clipping):
    """Weights (``normalize=False`` so that ties are exact): identity gradient to W (§2.5)
    and Eq. 8's or Eq. 11's alpha gradient."""
    q = lowbit.get_method(method).weight_quantizer(bits, normalize=False, clipping=clipping)
    gen = generator_for(method, bits, clipping, "weight")
    projection_case(q, method, bits, True, SHAPE_W, False, gen, GRADIENTS[clipping])


def test_pact_and_rcf_differ_by_the_projection_term():
    """On the same levels the two alpha gradients differ by Eq. 8's inside term alone,
    ``sum g (Pi(x/alpha) - x/alpha)`` over ``|x| <= alpha`` (Eq. 8 minus Eq. 11)."""
    gen = generator_for("difference")
    x = torch.randn(500, generator=gen, dtype=torch.float64)
    g = torch.randn(500, generator=gen, dtype=torch.float64)
    grads = {}
    for clipping in GRADIENTS:
        alpha = torch.tensor(1.25, dtype=torch.float64, requires_grad=True)
        (GRADIENTS[clipping](x, alpha, "apot", 4, True) * g).sum().backward()
        grads[clipping] = float(alpha.grad)
        q = lowbit.get_method("apot").input_quantizer(4, signed=True, clipping=clipping)
        set_parameters(q, {"alpha": torch.tensor(1.25)})
        (q(x.float()) * g.float()).sum().backward()
        assert float(q.alpha.grad) == pytest.approx(grads[clipping], rel=1e-5, abs=1e-5)
    inside = x.abs() <= 1.25
    u = x / 1.25
    projected = rcf(x, torch.tensor(1.25, dtype=torch.float64), "apot", 4, True) / 1.25
    term = float((g * (projected - u))[inside].sum())
    assert grads["rcf"] - grads["pact"] == pytest.approx(term, rel=1e-9, abs=1e-12)
    assert abs(term) > 0.1  # far above the tolerance: the two gradients are told apart


@pytest.mark.parametrize("method,bits", CASES)
def test_no_clipping_uses_max_abs_weight(method, bits):
    """Table 3's "RCF" cross: alpha = max|W| (nothing clipped, Eq. 7 with that alpha), not a
    parameter; W gets the identity gradient (§2.5)."""
    q = lowbit.get_method(method).weight_quantizer(bits, normalize=False, clipping="max")
    assert q.alpha is None and not list(q.parameters())
    gen = generator_for(method, bits, "max")
    x, fixed = make_tensor(SHAPE_W, 0.5, gen)
    fixed.view(-1)[x.abs().argmax()] = True  # the maximum stays where it is
    top = float(x.abs().max())
    x = clean(x, fixed, lambda v: rcf_margin(v, top, method, bits, True), top, gen)
    g = gradient(x.shape, gen)

    def fn(v, p):
        return rcf(v, torch.tensor(top, dtype=v.dtype), method, bits, True,
                   clip_input_gradient=False)

    lib, ref = run_library(q, x, g), run_reference(fn, x, g, {})
    assert_agrees(compare(lib, ref, None, x, g, top), f"{method} {bits}-bit, alpha = max|W|")
    assert torch.equal(lib.grad_x, g.double())
    assert float(q.output_scale(x)) == top  # what an export scales the levels by
