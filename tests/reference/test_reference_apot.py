"""apot / pot / uniform (APoT Eq. 2-9, §2.5) and maxscale against float64 references.

Each case builds lowbit's quantizer through the registry, sets alpha to a known value and
compares forward values and the gradients of the input and of alpha with ``refeq_apot``.
"""

from __future__ import annotations

import math

import pytest
import torch
from refeq_apot import (
    apot_weight,
    apot_weight_margin,
    maxscale,
    maxscale_margin,
    normalize_weight,
    rcf,
    rcf_margin,
    unnormalized_levels,
)
from refeq_battery import (
    F64,
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

import lowbit

RCF_METHODS = [m for m in lowbit.available_methods() if m in ("apot", "pot", "uniform")]


def bit_range(name: str) -> list[int]:
    method = lowbit.get_method(name)
    return list(range(method.min_bits, method.max_bits + 1))


RCF_CASES = [(m, b) for m in RCF_METHODS for b in bit_range(m)]
SHAPE_IN, SHAPE_W = (4, 60), (6, 5, 2, 4)


def exact_alpha(level_set: str, bits: int, signed: bool) -> float:
    """``alpha = M 2^m`` in [1, 2): the scaled levels ``alpha S / M = 2^m S`` and their
    midpoints are dyadic, exact in float32, so ties can be placed exactly."""
    _, top = unnormalized_levels(level_set, bits, signed)
    return top * 2.0 ** -math.floor(math.log2(top))


def tie_values(level_set, bits, signed, alpha, generator, count=8):
    """Up to ``count`` midpoints of neighbouring scaled levels that float32 holds exactly."""
    levels, top = unnormalized_levels(level_set, bits, signed)
    mids = ((levels[1:] + levels[:-1]) / 2 * (alpha / top)).tolist()
    exact = [m for m in mids if abs(m) >= 2.0**-100 and float(torch.tensor(m)) == m]
    order = torch.randperm(len(exact), generator=generator).tolist()
    return [exact[i] for i in order[:count]]


def check_projection(q, method, bits, signed, shape, clip_input_gradient, gen, role):
    """Eq. 7 / Eq. 8 of ``q`` (no normalization) at an exact ``alpha``, on a tensor drawn from
    ``gen`` with exact ties between neighbouring levels, against the reference."""
    alpha = exact_alpha(method, bits, signed)
    set_parameters(q, {"alpha": torch.tensor(alpha)})
    x, fixed = make_tensor(shape, alpha, gen)
    ties = tie_values(method, bits, signed, alpha, gen)
    place(x, fixed, torch.randperm(x.numel(), generator=gen)[: len(ties)].tolist(), ties)
    x = clean(x, fixed, lambda v: rcf_margin(v, alpha, method, bits, signed), alpha, gen)

    def fn(v, p):
        return rcf(v, p["alpha"], method, bits, signed, clip_input_gradient=clip_input_gradient)

    check_against_reference(
        q, fn, x, gradient(x.shape, gen), {"alpha": torch.tensor(alpha)}, alpha,
        f"{method} {bits}-bit {role}",
    )


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("method,bits", RCF_CASES)
def test_rcf_input_quantizer(method, bits, signed):
    """Inputs: Eq. 7 forward (nearest level, ties to the larger level), Eq. 8 alpha
    gradient, clipped straight-through input gradient (signed: [-alpha, alpha]; unsigned:
    clipped from above only, negatives project to 0). No normalization on inputs."""
    q = lowbit.get_method(method).input_quantizer(bits, signed=signed)
    gen = generator_for(method, bits, signed, "input")
    check_projection(q, method, bits, signed, SHAPE_IN, True, gen, "input")


@pytest.mark.parametrize("method,bits", RCF_CASES)
def test_rcf_weight_quantizer(method, bits):
    """Weights (registry defaults): Eq. 9 normalization with gradients through mean and std,
    Eq. 7 on the signed set, Eq. 8 alpha gradient, identity gradient to the normalized
    weight (§2.5), output times Eq. 9's ``std + eps`` (the spec's rescale)."""
    q = lowbit.get_method(method).weight_quantizer(bits)
    alpha = 1.5
    set_parameters(q, {"alpha": torch.tensor(alpha)})
    gen = generator_for(method, bits, "weight")
    x, fixed = make_tensor(SHAPE_W, 0.08, gen)
    x = clean(x, fixed, lambda v: apot_weight_margin(v, alpha, method, bits), 0.08, gen)
    g = gradient(x.shape, gen)

    def fn(v, p):
        return apot_weight(v, p["alpha"], method, bits, rescale=True)

    divisor = float(normalize_weight(x.double())[1].detach())
    check_against_reference(
        q, fn, x, g, {"alpha": torch.tensor(alpha)}, alpha * divisor,
        f"{method} {bits}-bit weight", coupled=True,
    )


@pytest.mark.parametrize("method,bits", RCF_CASES)
def test_rcf_weight_projection_with_exact_ties(method, bits):
    """Weights without Eq. 9 (``normalize=False``), so that ties can be exact: Eq. 7 on the
    signed set, ties to the larger level, Eq. 8 alpha gradient, identity input gradient
    (§2.5: dW_hat/dW_tilde = 1), also beyond +-alpha."""
    q = lowbit.get_method(method).weight_quantizer(bits, normalize=False)
    gen = generator_for(method, bits, "weight-ties")
    check_projection(q, method, bits, True, SHAPE_W, False, gen, "weight, ties")


@pytest.mark.parametrize("method,bits", RCF_CASES)
def test_level_sets_are_eq2_eq3_eq5_eq6(method, bits):
    """lowbit.levels equals the reference's Eq. 2 / 3 / 5 / 6 sets, normalized to max 1
    (signed: sign bit plus bits - 1 magnitude bits)."""
    for signed in (False, True):
        levels, top = unnormalized_levels(method, bits, signed)
        got = lowbit.levels(method, bits, signed=signed).to(F64)
        assert got.shape == levels.shape, (signed, got.shape, levels.shape)
        torch.testing.assert_close(got, levels / top, rtol=1e-15, atol=0)


MAXSCALE_BITS = bit_range("maxscale") if "maxscale" in lowbit.available_methods() else []


@pytest.mark.parametrize("bits", MAXSCALE_BITS)
def test_maxscale_weight_quantizer(bits):
    """``round(w / max(W) * n) / n * max(W)``, ``n = 2^(b-1) - 1``, half to even, nothing
    clipped (weights below -max(W) keep codes beyond -n), straight-through gradient; no
    parameters. Exact ties only at 2 bits (``n = 1``: ``w = +-max/2``); for larger ``n`` a
    half-way point ``(k + 1/2) max / n`` is not a float32 number."""
    q = lowbit.get_method("maxscale").weight_quantizer(bits)
    assert lowbit.get_method("maxscale").input_quantizer is None
    gen = generator_for("maxscale", bits)
    top = 0.25
    x, fixed = make_tensor(SHAPE_W, 0.08, gen)
    x.clamp_(max=0.24)
    positions = torch.randperm(x.numel(), generator=gen)[:8].tolist()
    values = [top, -0.3125, -0.375, -0.5]  # the maximum, and weights below -max(W)
    if bits == 2:
        values += [top / 2, -top / 2]  # exact ties at +-max/2
    place(x, fixed, positions[: len(values)], values)
    x = clean(x, fixed, lambda v: maxscale_margin(v, bits), 0.08, gen)
    g = gradient(x.shape, gen)

    def fn(v, p):
        return maxscale(v, bits)

    lib = run_library(q, x, g)
    ref = run_reference(fn, x, g, {})
    step = top / (2 ** (bits - 1) - 1)
    assert_agrees(compare(lib, ref, None, x, g, step), f"maxscale {bits}-bit")
