"""Gradients exactly on a clipping bound, where each paper's piecewise definition decides.

The main battery leaves the input gradient at these points out (``kinks``); here it is
compared, together with the parameter's gradient, against the same references:

* APoT Eq. 8: ``|W| <= alpha`` is inside (x passes, ``dalpha = Pi(1) - 1 = 0``).
* UniQ Eq. 6: ``|x| < alpha`` is inside, so at ``|x| = alpha`` the step gets the clipped
  case and x nothing; Eq. 5 "similarly": ``0 < x / Delta < N - 1`` inside.
* LSQ Eq. 3: ``-Q_N < v/s < Q_P`` inside; ``v/s <= -Q_N`` and ``v/s >= Q_P`` are the clipped
  cases (the step gets ``-Q_N`` / ``Q_P``, v nothing).
* PACT Eq. 1 / 3: ``y = x`` on ``[0, alpha)``, ``alpha`` on ``[alpha, inf)``: at ``x = 0`` x
  passes, at ``x = alpha`` alpha gets 1 and x nothing; two-sided (the spec) ``-1`` for
  ``x <= -alpha``.
"""

from __future__ import annotations

import pytest
import torch
from refeq_apot import rcf, unnormalized_levels
from refeq_battery import (
    assert_agrees,
    compare,
    quantizer_for,
    run_library,
    run_reference,
    set_parameters,
)
from refeq_pact import pact, pact_steps
from refeq_uniform import (
    clip_bounds,
    gradient_scale,
    lsq,
    positive_codes,
    uniq_activation,
    uniq_weight,
)

import lowbit

BITS = 3
INTERIOR = [0.3125, -0.5625, 0.8125]  # fractions of the bound, for contrast (dyadic: exact)


def run(quantizer, values, fn, params, unit, multiplier=1.0, label=""):
    x = torch.tensor(values, dtype=torch.float32).reshape(1, -1)
    assert x.double().reshape(-1).tolist() == [float(v) for v in values], "not exact"
    g = torch.arange(1.0, x.numel() + 1).reshape(x.shape)  # tells the elements apart
    lib = run_library(quantizer, x, g)
    ref = run_reference(fn, x, g, params)
    problems = compare(lib, ref, None, x, g, unit, multiplier=multiplier)
    assert_agrees(problems, label)


def rcf_methods():
    return [m for m in lowbit.available_methods() if m in ("apot", "pot", "uniform")]


@pytest.mark.parametrize("role", ["unsigned input", "signed input", "weight"])
@pytest.mark.parametrize("method", rcf_methods())
def test_rcf_at_alpha(method, role):
    """APoT Eq. 8 at ``|x| = alpha``: inside (``|W| <= alpha``)."""
    q, signed = quantizer_for(method, BITS, role, normalize=False)
    _, top = unnormalized_levels(method, BITS, signed)
    alpha = top * 2.0 ** -int(torch.tensor(top).log2().floor())
    set_parameters(q, {"alpha": torch.tensor(alpha)})
    bounds = [alpha, -alpha] if signed else [alpha]
    values = bounds + [f * alpha for f in INTERIOR]

    def fn(v, p):
        return rcf(v, p["alpha"], method, BITS, signed, clip_input_gradient=role != "weight")

    run(q, values, fn, {"alpha": torch.tensor(alpha)}, alpha, label=f"{method} {role}")


def learned_step_cases():
    cases = []
    for method in ("uniq", "lsq"):
        if method in lowbit.available_methods():
            cases += [(method, "weight"), (method, "unsigned input"), (method, "signed input")]
    return cases


@pytest.mark.filterwarnings("ignore:an unsigned .* activation quantizer sees")
@pytest.mark.parametrize("method,role", learned_step_cases())
def test_learned_step_at_the_clipping_bounds(method, role):
    """UniQ Eq. 6 / LSQ Eq. 3 on the bounds: the clipped cases (strict inside ranges)."""
    q, signed = quantizer_for(method, BITS, role, per_channel=False)
    grid = "unsigned" if not signed else ("symmetric" if method == "uniq" else "signed")
    step = 0.25
    low, high = clip_bounds(grid, BITS)
    values = [low * step, high * step] + [f * high * step for f in INTERIOR]
    q.observe(torch.tensor(values).reshape(1, -1))
    set_parameters(q, {"step": torch.tensor(step)})
    g = 1.0 / (len(values) * positive_codes(grid, BITS)) ** 0.5

    def fn(v, p):
        s = gradient_scale(p["step"], g)
        if grid == "symmetric":
            return uniq_weight(v, s, BITS)
        if method == "uniq":
            return uniq_activation(v, s, BITS)
        return lsq(v, s, BITS, signed=grid == "signed")

    run(q, values, fn, {"step": torch.tensor(step)}, step, multiplier={"step": g},
        label=f"{method} {role}")


PACT_METHODS = {"pact": "pact", "dorefa": None, "coquant": "adabits"}


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("method", [m for m in lowbit.available_methods() if m in PACT_METHODS])
def test_pact_at_zero_and_alpha(method, signed):
    """PACT Eq. 1 pieces ``[0, alpha)`` and ``[alpha, inf)`` (two-sided: ``(-inf, -alpha]``,
    ``(-alpha, alpha)``, ``[alpha, inf)``)."""
    q = lowbit.get_method(method).input_quantizer(BITS, signed=signed)
    alpha = pact_steps(BITS, signed) / 4
    set_parameters(q, {"alpha": torch.tensor(alpha)})
    values = [0.0, alpha] + ([-alpha] if signed else []) + [f * alpha for f in INTERIOR]
    mode = PACT_METHODS[method]
    names = () if mode is None else ("alpha",)

    def fn(v, p):
        return pact(v, p["alpha"], BITS, signed, mode or "pact")

    x = torch.tensor(values, dtype=torch.float32).reshape(1, -1)
    g = torch.arange(1.0, x.numel() + 1).reshape(x.shape)
    lib = run_library(q, x, g)
    ref = run_reference(fn, x, g, {"alpha": torch.tensor(alpha)}, grad_names=names)
    kind = "signed" if signed else "unsigned"
    assert_agrees(compare(lib, ref, None, x, g, 0.25), f"{method} {kind} input")
