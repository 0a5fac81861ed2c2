"""One-pass projection equals brute-force nearest level; tie rule: half-way goes up."""

import pytest
import torch

import lowbit
from lowbit.quant.project import grid_cells, midpoints, project_to_levels

FAMILIES = [
    (name, bits, signed)
    for name in ("apot", "pot", "uniform")
    for bits in range(2, 7)
    for signed in (False, True)
]


def brute_force(x, levels):
    distance = (x[..., None] - levels).abs()
    return levels[distance.argmin(-1)]


@pytest.mark.parametrize("name, bits, signed", FAMILIES)
def test_projection_equals_brute_force_float64(name, bits, signed):
    levels = lowbit.levels(name, bits, signed)
    x = torch.empty(20_000, dtype=torch.float64).uniform_(
        -1.3, 1.3, generator=torch.Generator().manual_seed(bits)
    )
    torch.testing.assert_close(project_to_levels(x, levels), brute_force(x, levels), rtol=0, atol=0)


@pytest.mark.parametrize("name, bits, signed", FAMILIES)
def test_projection_float32_differs_only_at_rounding_distance_of_a_boundary(name, bits, signed):
    levels = lowbit.levels(name, bits, signed)
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(7)) * 0.6
    ours = project_to_levels(x, levels.float())
    reference = brute_force(x.double(), levels).float()
    differ = ours != reference
    near_boundary = (x.double()[:, None] - midpoints(levels)).abs().min(-1).values < 1e-6
    assert not (differ & ~near_boundary).any()


@pytest.mark.parametrize(
    "levels",
    [
        lowbit.levels("pot", 4),
        lowbit.levels("pot", 6, signed=True),  # grid, search
        lowbit.levels("apot", 4) * 1.5,
        lowbit.levels("apot", 5, signed=True) * 1.75,
    ],
)
def test_ties_go_to_the_larger_level(levels):
    """Exactly representable half-way points (dyadic levels) go up, on both paths."""
    assert torch.equal(project_to_levels(midpoints(levels), levels), levels[1:])


def test_grid_and_search_paths_agree():
    """APoT and uniform use the grid lookup, PoT beyond 4 bits the binary search."""
    assert grid_cells(lowbit.levels("apot", 4)) is not None
    assert grid_cells(lowbit.levels("pot", 6)) is None
    x = torch.linspace(-2, 2, 10_001, dtype=torch.float64)
    for name, bits, signed in FAMILIES:
        levels = lowbit.levels(name, bits, signed)
        off_tie = (x[:, None] - midpoints(levels)).abs().min(-1).values > 1e-12
        ours, reference = project_to_levels(x, levels), brute_force(x, levels)
        assert torch.equal(ours[off_tie], reference[off_tie])


def test_out_of_range_values_go_to_end_levels():
    levels = lowbit.levels("apot", 3, signed=True)
    out = project_to_levels(torch.tensor([-5.0, 5.0], dtype=torch.float64), levels)
    assert out.tolist() == [-1.0, 1.0]


def test_projection_keeps_shape():
    x = torch.randn(2, 3, 4, 5)
    assert project_to_levels(x, lowbit.levels("apot", 4).float()).shape == x.shape


@pytest.mark.parametrize("name, bits", [("apot", 4), ("pot", 6)])  # grid, search
def test_projection_keeps_layout(name, bits):
    """A channels-last or permuted input is projected in its memory order, not copied: the
    result has its layout (as the operators' fake tensors say) and the contiguous values."""
    levels = lowbit.levels(name, bits, signed=True).float()
    x = torch.randn(2, 3, 4, 5)
    for laid_out in (x.contiguous(memory_format=torch.channels_last), x.transpose(1, 3)):
        out = project_to_levels(laid_out, levels)
        assert out.stride() == laid_out.stride()
        assert torch.equal(out, project_to_levels(laid_out.contiguous(), levels))
