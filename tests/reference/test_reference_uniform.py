"""uniq (UniQ Eq. 3-6, 9-10) and lsq (LSQ §2, Eq. 1-3) against float64 references.

Steps are powers of two so that every tie ``x / step`` on a rounding boundary is exact in
float32. Each quantizer is initialized by ``observe`` (as calibration does), then its step
is overwritten with the known value.
"""

from __future__ import annotations

import math

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
from refeq_uniform import (
    clip_bounds,
    gradient_scale,
    lsq,
    positive_codes,
    uniform_margin,
    uniq_activation,
    uniq_weight,
)

import lowbit

SHAPE_IN, SHAPE_W = (4, 60), (6, 5, 2, 4)


def bit_range(name: str) -> list[int]:
    if name not in lowbit.available_methods():
        return []
    method = lowbit.get_method(name)
    return list(range(method.min_bits, method.max_bits + 1))


def power_of_two_step(target: float) -> float:
    return 2.0 ** round(math.log2(target))


def grid_of(method: str, signed: bool) -> str:
    if not signed:
        return "unsigned"
    return "symmetric" if method == "uniq" else "signed"


def reference_fn(method: str, grid: str, bits: int, g: float):
    def fn(v, p):
        step = gradient_scale(p["step"], g)
        if grid == "symmetric":
            return uniq_weight(v, step, bits)
        if grid == "unsigned" and method == "uniq":
            return uniq_activation(v, step, bits)
        return lsq(v, step, bits, signed=grid == "signed")

    return fn


def tie_codes(grid: str, bits: int) -> list[float]:
    """Positions ``x / step`` of the rounding boundaries inside the clipping range: integers
    between the half-integer codes of the symmetric grid, half-integers otherwise."""
    low, high = clip_bounds(grid, bits)
    if grid == "symmetric":
        return [float(m) for m in range(math.ceil(low), math.floor(high) + 1) if low < m < high]
    return [k + 0.5 for k in range(int(low), int(high))]


def run_case(method, bits, grid, per_channel, quantizer, shape, steps, label):
    """Build the tensor (per-channel ranges and ties), run lowbit and the reference."""
    gen = generator_for(method, bits, grid, per_channel, label)
    channels = shape[0] if per_channel else 1
    low, high = clip_bounds(grid, bits)
    view = (-1,) + (1,) * (len(shape) - 1)
    step_tensor = torch.tensor(steps, dtype=torch.float64)
    unit = step_tensor.view(view) if per_channel else step_tensor.reshape(())
    scale = unit * max(abs(low), high)
    x, fixed = make_tensor(shape, scale, gen)
    per = x.numel() // channels
    codes = tie_codes(grid, bits)
    positions, values = [], []
    for i in range(8):
        channel = i % channels
        code = codes[int(torch.randint(len(codes), (), generator=gen))]
        positions.append(channel * per + int(torch.randint(per, (), generator=gen)))
        values.append(code * steps[channel])
    place(x, fixed, positions, values)
    step_param = step_tensor.float() if per_channel else step_tensor.float().reshape(())
    x = clean(x, fixed, lambda v: uniform_margin(v, step_param, grid, bits), scale, gen)
    g_out = gradient(x.shape, gen)

    quantizer.observe(x)  # data-initialized: initialize, then overwrite the step
    set_parameters(quantizer, {"step": step_param})
    n = x.numel() // step_param.numel()
    g = 1.0 / math.sqrt(n * positive_codes(grid, bits))
    fn = reference_fn(method, grid, bits, g)
    params = {"step": step_param}
    kinks = (x == 0) if grid == "unsigned" else None  # the lower clipping bound
    check_against_reference(
        quantizer, fn, x, g_out, params, unit, f"{method} {bits}-bit {label}", kinks=kinks,
        multiplier={"step": g}, per_channel=per_channel,
    )


WEIGHT_CASES = [
    (m, b, pc) for m in ("uniq", "lsq") for b in bit_range(m) for pc in (False, True)
]
INPUT_CASES = [(m, b, s) for m in ("uniq", "lsq") for b in bit_range(m) for s in (False, True)]


@pytest.mark.parametrize("method,bits,per_channel", WEIGHT_CASES)
def test_learned_step_weight_quantizer(method, bits, per_channel):
    """uniq weights: Eq. 3 (half-integer codes, ties away from zero), Eq. 6 step gradient
    times LSQ's scale ``1/sqrt(n max(2^(b-1)-1, 1))``. lsq weights: Eq. 1-2 on the
    two's-complement codes ``-2^(b-1) .. 2^(b-1)-1`` (ties half to even), Eq. 3 step gradient
    times ``1/sqrt(n (2^(b-1)-1))``. ``n`` = elements per step (per output channel when
    ``per_channel``); input straight-through inside the range."""
    grid = "symmetric" if method == "uniq" else "signed"
    q = lowbit.get_method(method).weight_quantizer(bits, per_channel=per_channel)
    shape = SHAPE_W
    channels = shape[0] if per_channel else 1
    low, high = clip_bounds(grid, bits)
    targets = [0.05 * (1 + c) / max(abs(low), high) for c in range(channels)]
    steps = [power_of_two_step(t) for t in targets]
    label = "weight, per channel" if per_channel else "weight, per tensor"
    run_case(method, bits, grid, per_channel, q, shape, steps, label)


@pytest.mark.filterwarnings("ignore:an unsigned .* activation quantizer sees")
@pytest.mark.parametrize("method,bits,signed", INPUT_CASES)
def test_learned_step_input_quantizer(method, bits, signed):
    """Inputs, layer-wise. Unsigned: uniq Eq. 5 / lsq with ``Q_N = 0, Q_P = 2^b - 1``, ties
    half to even, gradient scale ``1/sqrt(numel (2^b - 1))``. Signed (the spec): uniq's
    symmetric grid of Eq. 3; lsq's two's-complement grid (``Q_P = 2^(b-1) - 1``)."""
    grid = grid_of(method, signed)
    q = lowbit.get_method(method).input_quantizer(bits, signed=signed)
    low, high = clip_bounds(grid, bits)
    steps = [power_of_two_step(2.0 / max(abs(low), high))]
    label = "signed input" if signed else "unsigned input"
    run_case(method, bits, grid, False, q, SHAPE_IN, steps, label)
