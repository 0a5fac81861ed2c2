"""SRQ options beyond the main method: the ternary weight grid (seed 004 Table 3's "T") and
App. E's Gumbel sampling (its gradients: tests/reference/test_reference_gumbel_ste.py)."""

import pytest
import torch

from lowbit import LowbitError
from lowbit.quant.rq import RQQuantizer
from lowbit.quant.srq import SRQQuantizer


@pytest.mark.parametrize("cls", [SRQQuantizer, RQQuantizer])
def test_ternary_grid_is_alpha_times_minus_one_zero_one(cls):
    quantizer = cls(2, alpha=0.5, ternary=True)
    x = torch.linspace(-2, 2, 101, requires_grad=True)
    out = quantizer.eval()(x)
    # Algorithm 1 DEPLOYMENT on the ternary grid: clamp(alpha round(x / alpha), -alpha, alpha).
    torch.testing.assert_close(out, torch.floor(x / 0.5 + 0.5).clamp(-1, 1) * 0.5)
    trained = quantizer.train()(x)  # RQ: a relaxed mix of the three points (Eq. 2)
    assert trained.abs().max() <= 0.5
    trained.sum().backward()
    assert quantizer.alpha.grad is not None and x.grad.abs().sum() > 0


def test_ternary_is_for_signed_two_bit_grids():
    with pytest.raises(LowbitError, match="ternary grid"):
        SRQQuantizer(2, signed=False, ternary=True)
    with pytest.raises(LowbitError, match="ternary must be"):
        SRQQuantizer(2, ternary="yes")


def test_gumbel_sampling_replaces_the_masks():
    with pytest.raises(LowbitError, match="replaces DropBits"):
        SRQQuantizer(3, masks="bitwise", sampling="gumbel")
    with pytest.raises(LowbitError, match="sampling must be"):
        SRQQuantizer(3, sampling="argmax")
    with pytest.raises(LowbitError, match="temperature"):
        SRQQuantizer(3, sampling="gumbel", temperature=0)
