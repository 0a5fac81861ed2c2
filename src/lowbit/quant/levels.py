"""Exact quantization level sets (APoT paper, Eq. 2, 3, 5 and 6).

Every set is returned sorted and normalized so that its largest level is 1; a quantizer
multiplies it by its clipping threshold alpha. Unsigned sets (activations) have ``2**bits``
levels in [0, 1]. Signed sets (weights) spend one bit on the sign and ``bits - 1`` bits on
the magnitude (APoT §4.1), so they are the unsigned ``bits - 1`` set mirrored about zero:
``2**bits - 1`` levels in [-1, 1] (zero appears once). 2-bit signed sets are therefore
ternary, {-1, 0, 1}, for every family.
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch

from lowbit.errors import LowbitError

MAX_BITS = 8


def uniform_magnitudes(bits: int) -> list[float]:
    """Eq. 2 for unsigned data: ``{0, 1, 2, ..., 2**bits - 1} / (2**bits - 1)``."""
    top = 2**bits - 1
    return [i / top for i in range(top + 1)]


def pot_magnitudes(bits: int) -> list[float]:
    """Eq. 3 for unsigned data: zero and the powers of two ``2**0 ... 2**-(2**bits - 2)``.

    Eq. 3 as printed lists ``2**(b-1)`` powers plus zero for each sign, one level more than a
    b-bit code holds; like the authors' code we keep the ``2**bits - 1`` largest powers, so the
    smallest power is dropped and the set fits its bits exactly.
    """
    return [0.0] + [2.0**-e for e in range(2**bits - 1)]


def apot_terms(bits: int) -> list[list[float]]:
    """The additive powers-of-two terms of Eq. 5 (even bits) and Eq. 6 (odd bits), k = 2.

    Even ``b = 2n``: ``p_i in {0, 2^-i, 2^-(i+n), 2^-(i+2n)}`` for i < n.
    Odd ``b = 2n+1``: ``p_i in {0, 2^-i, 2^-(i+n), 2^-(i+2n+1)}`` for i < n, plus
    ``p~ in {0, 2^-2n}``. Every level is one choice from each term, summed.
    """
    n = bits // 2
    if bits % 2 == 0:
        return [[0.0, 2.0**-i, 2.0 ** -(i + n), 2.0 ** -(i + 2 * n)] for i in range(n)]
    terms = [[0.0, 2.0**-i, 2.0 ** -(i + n), 2.0 ** -(i + 2 * n + 1)] for i in range(n)]
    return terms + [[0.0, 2.0 ** -(2 * n)]]


def apot_magnitudes(bits: int) -> list[float]:
    """Eq. 5 / Eq. 6 levels before scaling by gamma: all sums of one value per term."""
    return [sum(choice) for choice in itertools.product(*apot_terms(bits))]


MAGNITUDES: dict[str, Callable[[int], list[float]]] = {
    "uniform": uniform_magnitudes,
    "pot": pot_magnitudes,
    "apot": apot_magnitudes,
}


def levels(name: str, bits: int, signed: bool = False) -> torch.Tensor:
    """Sorted level set ``name`` at ``bits`` bits, scaled so that its maximum is 1.

    ``signed=True`` gives the weight set: a sign bit and ``bits - 1`` magnitude bits.
    The result is float64 on the CPU; quantizers cast it to their input's dtype and device.
    """
    if name not in MAGNITUDES:
        raise LowbitError(f"unknown level set {name!r}; choose one of {sorted(MAGNITUDES)}")
    min_bits = 2 if signed else 1
    if not isinstance(bits, int) or not min_bits <= bits <= MAX_BITS:
        kind = "signed" if signed else "unsigned"
        raise LowbitError(f"{kind} {name} levels need bits in {min_bits}..{MAX_BITS}, got {bits!r}")
    magnitude_bits = bits - 1 if signed else bits
    magnitudes = torch.tensor(sorted(set(MAGNITUDES[name](magnitude_bits))), dtype=torch.float64)
    magnitudes = magnitudes / magnitudes.max()
    if signed:
        return torch.cat([-magnitudes.flip(0)[:-1], magnitudes])
    return magnitudes
