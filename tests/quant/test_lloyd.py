"""Lloyd-Max levels (APoT Table 3's "Lloyd" quantizer): the algorithm against Max's optimal
Gaussian quantizers, and the quantizer's refit schedule, levels and state."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.errors import LowbitError
from lowbit.quant.lloyd import LloydQuantizer, lloyd_levels, uniform_cell_centres

# J. Max, "Quantizing for minimum distortion" (IRE Trans. Inf. Theory, 1960), Table I: the
# output levels of the minimum mean-squared-error quantizer of a unit Gaussian (positive half).
MAX_1960 = {
    2: [0.7979],
    4: [0.4528, 1.510],
    8: [0.2451, 0.7560, 1.344, 2.152],
}


def gaussian_quantiles(n: int = 100_000) -> torch.Tensor:
    """A unit Gaussian sample without sampling noise: its quantiles at (i + 1/2) / n."""
    return torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n)


@pytest.mark.parametrize("count", sorted(MAX_1960))
def test_lloyd_levels_are_max_1960_gaussian_optimum(count):
    levels = lloyd_levels(gaussian_quantiles(), count, iterations=200)
    positive = levels[count // 2:].tolist()
    assert positive == pytest.approx(MAX_1960[count], abs=6e-4)
    assert levels.tolist() == pytest.approx([-v for v in reversed(positive)] + positive, abs=1e-4)


def test_lloyd_levels_of_a_uniform_density_are_cell_centres():
    """On a uniform density the optimum cuts [0, 1] into equal cells, levels at their
    centres (k + 1/2) / N; the default 30 iterations get there from the quantile start."""
    values = (torch.arange(80_000, dtype=torch.float64) + 0.5) / 80_000
    torch.testing.assert_close(lloyd_levels(values, 8), (torch.arange(8) + 0.5).double() / 8,
                               rtol=0, atol=1e-6)
    assert uniform_cell_centres(2, signed=True).tolist() == [-0.75, -0.25, 0.25, 0.75]


def test_lloyd_levels_edge_cases():
    assert lloyd_levels(torch.tensor([0.5, 0.5, 0.5]), 2).tolist() == [0.5, 0.5]
    with pytest.raises(LowbitError, match="at least one level"):
        lloyd_levels(torch.ones(3), 0)
    with pytest.raises(LowbitError, match="needs values"):
        lloyd_levels(torch.ones(0), 2)


def test_lloyd_beats_uniform_levels_on_gaussian_weights():
    """A Lloyd-Max quantizer has the least squared error for its number of levels: below
    the uniform grid's (APoT Table 3: the highest accuracy)."""
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3)
    errors = {}
    for method in ("lloyd", "uniform"):
        q = lowbit.get_method(method).weight_quantizer(4, clipping="max", rescale=False)
        q.train()
        normalized, _ = q.normalized(w)
        errors[method] = float((q(w) - normalized).square().mean())
    assert errors["lloyd"] < 0.7 * errors["uniform"]


def test_refit_schedule_and_state():
    """Fit at the first training call, then every refit_every calls; never in eval mode; at
    calibration (observe). The levels and the call count are state (checkpoints)."""
    q = LloydQuantizer(3, signed=True, alpha=2.0, refit_every=3)
    assert q.levels.tolist() == uniform_cell_centres(3, True).float().tolist()
    q.eval()
    q(torch.randn(1000))
    assert q.levels.tolist() == uniform_cell_centres(3, True).float().tolist()
    q.train()
    fits = []
    for step in range(7):
        before = q.levels.clone()
        q(torch.randn(1000) * (step + 1))  # a new distribution every call
        fits.append(not torch.equal(before, q.levels))
    assert fits == [True, False, False, True, False, False, True]
    assert int(q.calls) == 7 and set(q.state_dict()) == {"alpha", "levels", "calls"}
    restored = LloydQuantizer(3, signed=True, alpha=2.0, refit_every=3)
    restored.load_state_dict(q.state_dict())
    assert torch.equal(restored.levels, q.levels)
    observed = q.levels.clone()
    q.observe(torch.rand(1000) * 0.1)
    assert not torch.equal(observed, q.levels)


def test_progressive_initialization_fits_at_the_first_step():
    """From another bit-width only ``calls`` loads (the levels differ in shape): the levels
    are fit at the first training call even off the refit_every schedule."""
    five = LloydQuantizer(5, signed=True, alpha=2.0, refit_every=100)
    five.calls.fill_(7)
    three = LloydQuantizer(3, signed=True, alpha=2.0, refit_every=100)
    three.load_state_dict({"alpha": five.alpha, "calls": five.calls}, strict=False)
    assert three.never_fit()
    three(torch.randn(1000))
    assert not three.never_fit() and int(three.calls) == 8


def test_levels_fit_what_rcf_projects_and_outputs_sit_on_them():
    """Signed: 2**bits levels, symmetric, fit to clip(x / alpha, 1); unsigned: 2**bits levels
    in [0, 1]. The output is alpha times one of them."""
    torch.manual_seed(0)
    q = LloydQuantizer(3, signed=True, alpha=1.5)
    x = torch.randn(4000)
    out = q(x)
    assert q.levels.numel() == 8 and torch.allclose(q.levels, -q.levels.flip(0))
    assert float(q.levels.abs().max()) <= 1.0
    assert torch.isin(out, q.levels * 1.5).all()
    activations = LloydQuantizer(2, signed=False, alpha=4.0)
    activations(torch.relu(torch.randn(4000)) * 3)
    assert activations.levels.numel() == 4 and float(activations.levels.min()) >= 0


def test_refit_every_must_be_a_positive_whole_number():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(LowbitError, match="refit_every"):
            LloydQuantizer(3, signed=True, alpha=1.0, refit_every=bad)
