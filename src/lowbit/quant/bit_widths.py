"""Quantizers that switch among a set of bit-widths (CoQuant, AdaBits): the set's checks and
the ``bits`` a switchable quantizer holds.

With ``bit_widths`` a quantizer serves every bit-width in the set: ``set_bits(b)`` switches it
(PACT keeps one alpha per bit-width). A bit-width outside the set (zero-shot evaluation) uses
the parameters of the nearest one in the set.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lowbit.errors import LowbitError

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: int, what: str = "bits") -> int:
    """``bits`` if it is a whole number in 2..8; a ``LowbitError`` otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise LowbitError(f"{what} must be whole numbers in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return bits


def check_bit_widths(bit_widths: Sequence[int]) -> tuple[int, ...]:
    """The set B as a tuple sorted from the highest bit-width down; empty or bad sets fail."""
    if isinstance(bit_widths, (str, bytes)) or not isinstance(bit_widths, Sequence):
        raise LowbitError(f"the bit-width set must be a list like [8, 6, 4, 2], got {bit_widths!r}")
    if not bit_widths:
        raise LowbitError("the bit-width set is empty; give at least one bit-width, e.g. [8, 4]")
    for bits in bit_widths:
        check_bits(bits, "bit-widths")
    if len(set(bit_widths)) != len(bit_widths):
        raise LowbitError(f"the bit-width set {list(bit_widths)} repeats a bit-width")
    return tuple(sorted(bit_widths, reverse=True))


def nearest_index(bit_widths: Sequence[int], bits: int) -> int:
    """Index in ``bit_widths`` of ``bits``, else of the nearest bit-width (the higher on a tie)."""
    return min(range(len(bit_widths)), key=lambda i: (abs(bit_widths[i] - bits), -bit_widths[i]))



class Switchable(nn.Module):
    """Holds ``bits`` and, when built with ``bit_widths``, switches among them."""

    def __init__(self, bits: int, bit_widths: Sequence[int] | None) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.bit_widths = None if bit_widths is None else check_bit_widths(bit_widths)

    def set_bits(self, bits: int) -> None:
        """Quantize to ``bits`` from now on (any of 2..8; outside ``bit_widths`` = zero-shot)."""
        if self.bit_widths is None:
            raise LowbitError(
                "this quantizer was built for one bit-width; build it with bit_widths=[...] "
                "(adaptive.bits in a config) to switch"
            )
        self.bits = check_bits(bits)


