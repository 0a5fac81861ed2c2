"""RQ's counter-based noise: the tensor formula draws the C kernel's bits, so a run is the same
with and without the kernels (issue 14: one noise source for every path; the RQ pass on both
paths: tests/quant/test_native.py)."""

from __future__ import annotations

import ctypes

import pytest
import torch

from lowbit.quant import native
from lowbit.quant.noise import counter_uniforms, element_counters, unit_interval

SEEDS = [0, 1, 0x1234_5678_9ABC_DEF0, 2**63 - 2]


def kernel_uniforms(seed: int, first: int, elements: int, slots: int) -> torch.Tensor:
    """``kernels.c``'s ``uniform_at`` for elements ``first ..``, through its test entry point."""
    out = torch.empty(elements, slots)
    native.library().lowbit_uniforms(
        ctypes.c_void_p(out.data_ptr()), ctypes.c_int64(elements), ctypes.c_int32(slots),
        ctypes.c_uint64(seed), ctypes.c_int64(first),
    )
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("first", [0, 2**32 - 3, 5 * 2**32 + 7])
def test_tensor_formula_draws_the_kernels_bits(kernel_path, seed, first):
    """Bit for bit, across the 32-bit boundary of the element counter."""
    if native.library() is None:
        pytest.skip("the CPU kernels are not built here (no C compiler)")
    counters = first + torch.arange(600, dtype=torch.int64)
    assert torch.equal(counter_uniforms(seed, counters, 7), kernel_uniforms(seed, first, 600, 7))


def test_uniforms_are_uniform_in_the_open_interval(kernel_path):
    u = counter_uniforms(7, torch.arange(40_000), 5)
    assert u.dtype == torch.float32 and u.min() > 0 and u.max() < 1
    counts = torch.histc(u, bins=20, min=0, max=1)
    expected = u.numel() / 20
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 45  # 19 degrees of freedom: p < 0.001 above 43.8
    # Neighbouring slots and elements are not correlated.
    centred = u - 0.5
    assert abs(float((centred[:, 0] * centred[:, 1]).mean())) < 0.003
    assert abs(float((centred[:-1, 0] * centred[1:, 0]).mean())) < 0.003


def test_the_extreme_hashes_stay_inside_the_open_interval():
    """Every 32-bit hash maps strictly inside (0, 1) in float32: 24 bits plus 1/2 would round
    the largest to 2^24, u = 1 and an infinite Gumbel variate (it did: one NaN in a ResNet-20
    RQ forward); -log(-log u) is finite at both ends."""
    bits = torch.tensor([0, 1, 2**31, 2**32 - 2, 2**32 - 1], dtype=torch.int64)
    u = unit_interval(bits)
    assert u.dtype == torch.float32 and bool((u > 0).all()) and bool((u < 1).all())
    assert bool(torch.isfinite(-(-u.log()).log()).all())
    assert float(u[-1]) == 1 - 2.0**-24 and float(u[0]) == 2.0**-24


def test_element_counters_number_memory_positions(kernel_path):
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(element_counters(x).flatten(), torch.arange(120))
    last = x.to(memory_format=torch.channels_last)
    counters = element_counters(last)
    assert sorted(counters.flatten().tolist()) == list(range(120))
    assert counters[0, 1, 0, 0] == 1 and counters[0, 0, 0, 1] == 3  # channels vary fastest
