"""Level sets against APoT Eq. 2, 3, 5, 6 and the paper's worked examples (§2.2)."""

import itertools

import pytest
import torch

import lowbit
from lowbit import LowbitError
from lowbit.quant.levels import apot_terms


def normalized(values):
    t = torch.tensor(sorted(set(values)), dtype=torch.float64)
    return t / t.max()


def sums(*terms):
    return [sum(c) for c in itertools.product(*terms)]


def test_apot_4bit_worked_example_eq5():
    """b=4, k=2: p0 in {0, 2^0, 2^-2, 2^-4}, p1 in {0, 2^-1, 2^-3, 2^-5}, gamma = 2*alpha/3."""
    p0 = [0, 2**0, 2**-2, 2**-4]
    p1 = [0, 2**-1, 2**-3, 2**-5]
    levels = lowbit.levels("apot", 4)
    gamma = 2 / 3  # alpha = 1
    expected = torch.tensor(sorted(gamma * s for s in sums(p0, p1)), dtype=torch.float64)
    torch.testing.assert_close(levels, expected, rtol=0, atol=1e-15)
    assert levels.numel() == 16
    assert levels[1].item() == pytest.approx(2**-4 / 3, abs=1e-15)  # smallest positive level


def test_apot_3bit_worked_example_eq6():
    """b=3: p0 in {0, 2^-1, 2^-2, 2^-4}, p~ in {0, 2^-3}."""
    expected = normalized(sums([0, 2**-1, 2**-2, 2**-4], [0, 2**-3]))
    torch.testing.assert_close(lowbit.levels("apot", 3), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "bits, terms",
    [  # the authors' unsigned sets (REFERENCE-FACTS.md); equal to Eq. 5/6 after normalization
        (2, [[0, 2**-1, 2**-2, 2**-3]]),
        (3, [[0, 2**-1, 2**-2, 2**-4], [0, 2**-3]]),
        (4, [[0, 2**-1, 2**-3, 2**-5], [0, 2**-2, 2**-4, 2**-6]]),
        (5, [[0, 2**-1, 2**-3, 2**-6], [0, 2**-2, 2**-4, 2**-7], [0, 2**-5]]),
    ],
)
def test_apot_matches_authors_level_sets(bits, terms):
    torch.testing.assert_close(
        lowbit.levels("apot", bits), normalized(sums(*terms)), rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("name", ["apot", "pot", "uniform"])
@pytest.mark.parametrize("bits", range(1, 9))
def test_unsigned_sets_have_2_pow_b_distinct_levels_in_unit_range(name, bits):
    levels = lowbit.levels(name, bits)
    assert levels.numel() == 2**bits
    assert levels.unique().numel() == 2**bits
    assert levels[0] == 0 and levels[-1] == 1
    assert torch.all(levels[1:] > levels[:-1])


@pytest.mark.parametrize("name", ["apot", "pot", "uniform"])
@pytest.mark.parametrize("bits", range(2, 9))
def test_signed_sets_are_sign_plus_magnitude(name, bits):
    """One sign bit + (b-1)-bit magnitude (APoT §4.1): 2^b - 1 levels, symmetric, with zero."""
    levels = lowbit.levels(name, bits, signed=True)
    assert levels.numel() == 2**bits - 1
    torch.testing.assert_close(levels, -levels.flip(0), rtol=0, atol=0)
    magnitudes = lowbit.levels(name, bits - 1)
    torch.testing.assert_close(levels[levels >= 0], magnitudes, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["apot", "pot", "uniform"])
def test_2bit_weights_are_ternary(name):
    assert lowbit.levels(name, 2, signed=True).tolist() == [-1.0, 0.0, 1.0]


@pytest.mark.parametrize("bits", range(2, 9))
def test_uniform_signed_is_eq2(bits):
    """Eq. 2: alpha * {0, ±1/(2^(b-1)-1), ±2/(2^(b-1)-1), ..., ±1}."""
    top = 2 ** (bits - 1) - 1
    expected = torch.tensor([i / top for i in range(-top, top + 1)], dtype=torch.float64)
    torch.testing.assert_close(lowbit.levels("uniform", bits, signed=True), expected)


@pytest.mark.parametrize("bits", range(2, 7))
def test_pot_signed_is_eq3_without_its_extra_smallest_power(bits):
    """Eq. 3 lists {0, ±2^(-2^(b-1)+1), ..., ±2^-1, ±1}: 2^b + 1 values, one more than b bits
    hold. Our set is Eq. 3 without ±2^(-2^(b-1)+1), the authors' code's choice."""
    eq3_magnitudes = [0.0] + [2.0**e for e in range(-(2 ** (bits - 1)) + 1, 1)]
    eq3 = sorted(set(eq3_magnitudes + [-m for m in eq3_magnitudes]))
    smallest = 2.0 ** (-(2 ** (bits - 1)) + 1)
    expected = torch.tensor([v for v in eq3 if abs(v) != smallest], dtype=torch.float64)
    torch.testing.assert_close(lowbit.levels("pot", bits, signed=True), expected, rtol=0, atol=0)


def test_apot_terms_count_matches_n_equals_b_over_k():
    """Eq. 5: n = b/k additive terms (k = 2); Eq. 6 adds one 2-level term for odd b."""
    assert [len(apot_terms(b)) for b in range(1, 9)] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert all(len(t) == 4 for t in apot_terms(6))
    assert len(apot_terms(5)[-1]) == 2


@pytest.mark.parametrize(
    "args", [("apot", 0), ("apot", 9), ("apot", 1, True), ("lloyd", 4), ("apot", 2.5)]
)
def test_bad_requests_raise_lowbit_error(args):
    with pytest.raises(LowbitError):
        lowbit.levels(*args)
