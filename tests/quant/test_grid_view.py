"""``grid_view`` (``lowbit.quant.hooks.GridReporter``) describes what each quantizer computes:
in evaluation its output is the nearest of the reported levels to the reported units, times
the reported scale. The training dynamics and `lowbit plot` rely on it."""

from __future__ import annotations

import pytest
import torch

from lowbit.quant.apot import RCFQuantizer
from lowbit.quant.dorefa import DoReFaWeightQuantizer
from lowbit.quant.dropbits import DROPPED
from lowbit.quant.hooks import GridReporter, StateReporter
from lowbit.quant.maxscale import MaxScaleQuantizer
from lowbit.quant.pact import PACTQuantizer
from lowbit.quant.rq import RQQuantizer
from lowbit.quant.srq import SRQQuantizer
from lowbit.quant.uniq import LearnedStepQuantizer


def _dropped_level() -> SRQQuantizer:
    quantizer = SRQQuantizer(3, masks="bitwise", l0_lambda=1e-3)
    quantizer.masks.fate[1] = DROPPED  # the 3-bit level: points -4, -3, 2, 3
    return quantizer


CASES = {
    "apot weights (Eq. 9, not rescaled)": lambda: RCFQuantizer(
        "apot", 4, True, 2.0, normalize=True, rescale=False),
    "apot inputs": lambda: RCFQuantizer("apot", 3, False, 1.5),
    "uniq kernel-wise": lambda: LearnedStepQuantizer(3, "symmetric", 0.3, per_channel=True),
    "lsq inputs": lambda: LearnedStepQuantizer(2, "unsigned", 0.4),
    "pact": lambda: PACTQuantizer(3, alpha=1.2),
    "pact signed": lambda: PACTQuantizer(3, alpha=1.2, signed=True),
    "rq": lambda: RQQuantizer(3, alpha=0.4),
    "srq unsigned": lambda: SRQQuantizer(2, signed=False, alpha=0.5),
    "srq-dropbits, a level dropped": _dropped_level,
    "dorefa original": lambda: DoReFaWeightQuantizer(3, rescale=False),
    "dorefa centered": lambda: DoReFaWeightQuantizer(3, "centered", rescale=False),
    "maxscale": lambda: MaxScaleQuantizer(4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_is_the_nearest_reported_level_times_the_scale(case):
    torch.manual_seed(0)
    quantizer = CASES[case]().eval()
    x = torch.randn(6, 3, 3, 3)
    if "inputs" in case or "unsigned" in case:
        x = x.abs()  # what a ReLU hands over
    if "dropbits" in case:
        quantizer.alpha.data.fill_(0.5)
    if "uniq" in case:
        quantizer.initialize(x)
    with torch.no_grad():
        out = quantizer(x)
    view = quantizer.grid_view(x)
    assert isinstance(quantizer, GridReporter)
    distance = (view.units.unsqueeze(-1) - view.levels).abs()
    nearest = view.levels[distance.argmin(-1)]
    torch.testing.assert_close(nearest * view.scale, out, rtol=1e-5, atol=1e-6)
    if "dropbits" in case:
        assert view.levels.tolist() == [-2, -1, 0, 1]


def test_modified_dorefa_reports_no_nearest_level_grid():
    # AdaBits' rounding takes the bin's left edge, not the nearest level.
    assert DoReFaWeightQuantizer(3, "modified").grid_view(torch.randn(4, 4)) is None


def test_learned_state_is_reported_by_name():
    assert set(RCFQuantizer("apot", 3, True, 3.0).training_state()) == {"alpha"}
    assert LearnedStepQuantizer(3, "unsigned").training_state() == {}  # not initialized yet
    assert set(RQQuantizer(3, alpha=0.5).training_state()) == {"alpha", "sigma", "temperature"}
    masks = SRQQuantizer(4, masks="bitwise").masks
    assert isinstance(masks, StateReporter)
    state = masks.training_state()
    assert state["keep_probability"].shape == (3,) and float(state["learned_bits"]) == 4.0
    assert PACTQuantizer(3, bit_widths=[8, 4]).training_state()["alpha"].shape == (2,)
