"""Integer codes: packing to the bit-width, level indices, and APoT's powers-of-two terms."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.export.codes import decode, encode, pack, unpack
from lowbit.export.grids import code_bits, grid_levels, pot_terms
from lowbit.quant.levels import levels


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 9])
@pytest.mark.parametrize("count", [0, 1, 7, 8, 13, 1000])
def test_pack_round_trip_and_size(bits, count):
    codes = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(bits))
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-count * bits // 8)
    assert torch.equal(unpack(packed, bits, count), codes)


def test_pack_layout_is_little_endian_bits():
    # 1 | 2 << 2 | 3 << 4 = 0b111001
    assert pack(torch.tensor([1, 2, 3]), 2).tolist() == [57]
    assert pack(torch.tensor([5, 3]), 3).tolist() == [5 | 3 << 3]
    with pytest.raises(LowbitError, match="fit in 2 bits"):
        pack(torch.tensor([4]), 2)


def test_encode_decode_per_channel():
    grid = levels("apot", 4, signed=True)
    scale = torch.tensor([0.5, 2.0])
    codes = torch.tensor([[0, 3, 14], [7, 8, 1]])
    values = decode(codes, grid, scale)
    assert torch.equal(values[1], grid.float()[codes[1]] * 2.0)
    assert torch.equal(encode(values, grid, scale), codes)
    with pytest.raises(LowbitError, match="off the quantizer.s grid"):
        encode(values + 0.01, grid, scale)


@pytest.mark.parametrize("family", ["apot", "pot"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_pot_terms_rebuild_the_levels_exactly(family, bits, signed):
    """APoT Eq. 5-6: every level is a sum of powers of two over gamma (the shift-add form)."""
    spec = {"levels": family, "bits": bits, "signed": signed}
    exponents, gamma = pot_terms(spec)
    grid = grid_levels(spec)
    powers = torch.where(exponents >= 0, 2.0 ** -exponents.double(), 0.0)
    assert torch.equal(grid.sign() * powers.sum(dim=1) / gamma, grid)
    n_terms = 1 if family == "pot" else (bits - signed + 1) // 2
    assert exponents.shape == (grid.numel(), n_terms)


def test_apot_4bit_unsigned_levels_use_two_terms_of_eq5():
    """Eq. 5, b = 4, k = 2: p0 in {0, 2^0, 2^-2, 2^-4}, p1 in {0, 2^-1, 2^-3, 2^-5}."""
    exponents, gamma = pot_terms({"levels": "apot", "bits": 4, "signed": False})
    assert gamma == 1.5
    assert set(exponents[:, 0].tolist()) == {-1, 0, 2, 4}
    assert set(exponents[:, 1].tolist()) == {-1, 1, 3, 5}


def test_code_bits():
    assert code_bits({"levels": "apot", "bits": 4, "signed": True}) == 4  # 15 levels
    assert code_bits({"levels": "integer", "first": -7.5, "count": 16, "divisor": 1}) == 4
    assert code_bits({"levels": "integer", "first": -130, "count": 258, "divisor": 127}) == 9
    assert pot_terms({"levels": "uniform", "bits": 4, "signed": True}) is None
