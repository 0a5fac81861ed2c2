"""pact, dorefa and coquant (PACT Eq. 1-3, DoReFa weights as UniQ Eq. 2, AdaBits' rounding)
against float64 references.

Inputs use ``alpha = n / 4`` (``n`` steps from 0 to alpha), so the step is 0.25 and every
half-way point ``(k + 1/2) / 4`` is exact in float32. DoReFa weights have no exact ties but
the zeros: ``tanh(0) = 0`` gives ``u = 1/2``, half-way between two codes at ``2^b - 1``
steps (original) and on a bin edge at ``2^b`` bins (modified).
"""

from __future__ import annotations

import pytest
import torch
from refeq_battery import (
    check_against_reference,
    clean,
    generator_for,
    gradient,
    make_tensor,
    place,
    set_parameters,
)
from refeq_pact import dorefa_margin, dorefa_weight, pact, pact_margin, pact_steps

import lowbit

SHAPE_IN, SHAPE_W = (4, 60), (6, 5, 2, 4)
# The spec's defaults: weight rounding scheme, and the alpha gradient of the input quantizer
# (None: alpha is fixed, DoReFa's activations clip at 1).
WEIGHT_SCHEME = {"dorefa": "original", "pact": "original", "coquant": "modified"}
ALPHA_GRADIENT = {"dorefa": None, "pact": "pact", "coquant": "adabits"}
METHODS = [m for m in lowbit.available_methods() if m in WEIGHT_SCHEME]


def bit_range(name: str) -> list[int]:
    method = lowbit.get_method(name)
    return list(range(method.min_bits, method.max_bits + 1))


CASES = [(m, b) for m in METHODS for b in bit_range(m)]


@pytest.mark.parametrize("method,bits", CASES)
def test_dorefa_weight_quantizer(method, bits):
    """Weights: UniQ Eq. 2, ``2 quantize_k(tanh(w) / (2 max|tanh w|) + 1/2) - 1``, with
    DoReFa's ``round(u (2^k-1)) / (2^k-1)`` (dorefa, pact) or AdaBits' ``min(floor(2^k u),
    2^k-1) / 2^k`` (coquant), STE on the rounding, gradients through tanh and the max, times
    ``std(w) / std(q)`` (detached; the spec's default rescale)."""
    q = lowbit.get_method(method).weight_quantizer(bits)
    assert not list(q.parameters())
    scheme = WEIGHT_SCHEME[method]
    gen = generator_for(method, bits, "weight")
    x, fixed = make_tensor(SHAPE_W, 0.08, gen)
    x = clean(x, fixed, lambda v: dorefa_margin(v, bits, scheme), 0.08, gen)
    g = gradient(x.shape, gen)

    def fn(v, p):
        return dorefa_weight(v, bits, scheme, rescale=True)

    check_against_reference(
        q, fn, x, g, {}, float(x.abs().max()), f"{method} {bits}-bit weight ({scheme})",
        coupled=True,
    )


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("method,bits", CASES)
def test_pact_input_quantizer(method, bits, signed):
    """Inputs: PACT Eq. 1-2, clip (unsigned ``[0, alpha]``; signed, the spec, ``[-alpha,
    alpha]``) and round ``x / step`` half to even, ``step = alpha / n``. Gradients: ``x``
    straight through inside the range; alpha per PACT Eq. 3 (pact: 1 above alpha, -1 below
    -alpha, 0 inside), autograd of AdaBits' formula (coquant: ``(Q - x) / alpha`` inside), or
    none (dorefa: alpha fixed at 1)."""
    q = lowbit.get_method(method).input_quantizer(bits, signed=signed)
    alpha_gradient = ALPHA_GRADIENT[method]
    if alpha_gradient is None:  # DoReFa: PACT at alpha = 1, not learned
        assert float(q.alpha) == 1.0 and not q.alpha.requires_grad
    n = pact_steps(bits, signed)
    alpha = n / 4
    set_parameters(q, {"alpha": torch.tensor(alpha)})
    gen = generator_for(method, bits, signed, "input")
    x, fixed = make_tensor(SHAPE_IN, alpha, gen)
    codes = range(-n if signed else 0, n)
    ties = [(codes[int(torch.randint(len(codes), (), generator=gen))] + 0.5) / 4 for _ in range(8)]
    place(x, fixed, torch.randperm(x.numel(), generator=gen)[:8].tolist(), ties)
    x = clean(x, fixed, lambda v: pact_margin(v, alpha, bits, signed), alpha, gen)
    g = gradient(x.shape, gen)

    def fn(v, p):
        return pact(v, p["alpha"], bits, signed, alpha_gradient or "pact")

    params = {"alpha": torch.tensor(alpha)}
    names = () if alpha_gradient is None else ("alpha",)
    kinks = None if signed else (x == 0)  # the lower clipping bound
    kind = "signed" if signed else "unsigned"
    check_against_reference(
        q, fn, x, g, params, 0.25, f"{method} {bits}-bit {kind} input", grad_names=names,
        kinks=kinks,
    )
