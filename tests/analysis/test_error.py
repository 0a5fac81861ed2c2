"""Quantization error analysis: APoT Eq. 14 (clipping vs projection), Fig. 4a (clipping ratio
against alpha) and per-layer SQNR (UniQ Table 1 convention)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.analysis.error import clip_projection_error, clipping_ratio, weight_errors
from lowbit.errors import LowbitError
from lowbit.models import build_model
from lowbit.quant.apot import normalize_weight
from lowbit.quant.init import optimal_sqnr_db


def test_eq14_split_by_hand():
    """Eq. 14: clipped elements contribute (|W| - alpha)^2, the rest (W - W_hat)^2, / I."""
    x = torch.tensor([-3.0, -0.4, 0.2, 2.0])
    x_hat = torch.tensor([-1.0, -0.5, 0.0, 1.0])
    clip, projection = clip_projection_error(x, x_hat, torch.tensor(-1.0), torch.tensor(1.0))
    assert clip == pytest.approx((2.0**2 + 1.0**2) / 4)
    assert projection == pytest.approx((0.1**2 + 0.2**2) / 4)


@pytest.mark.parametrize("rescale", [False, True])
def test_eq14_parts_sum_to_the_mse_of_an_rcf_quantizer(rescale):
    """Eq. 14 on W tilde (Eq. 9); with the output rescaled by std + eps, in those units."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 256), nn.Linear(256, 64, bias=False))
    lowbit.quantize(model, "apot", 3, overrides={"0": 3, "1": 3},
                    weight_options={"alpha": 1.2, "rescale": rescale})
    layer = model[1]
    error = weight_errors(model)[1]
    w_tilde = normalize_weight(layer.weight.detach())
    divisor = layer.weight.detach().std(correction=0) + 1e-5 if rescale else 1.0
    total = (w_tilde * divisor - layer.weight_quantizer(layer.weight).detach()).square().mean()
    assert error.mse == pytest.approx(float(total), rel=1e-5)
    assert error.clipped_fraction == pytest.approx(float((w_tilde.abs() > 1.2).float().mean()))
    assert error.clip_mse > 0 and error.projection_mse > 0


def test_clipping_ratio_fig4a():
    """Fig. 4a: the fraction of |W| > alpha, from 1 at alpha = 0 down to 0 at max |W|."""
    x = torch.tensor([-4.0, -1.0, 0.5, 2.0, 3.0])
    ratio = clipping_ratio(x, torch.tensor([0.0, 1.0, 2.5, 4.0]))
    assert ratio.tolist() == [1.0, 0.6, 0.4, 0.0]
    assert clipping_ratio(x, torch.tensor([0.0]), signed=False).item() == pytest.approx(0.6)


def test_sqnr_of_a_uniq_layer_at_the_mse_optimal_step():
    """UniQ Table 1: Gaussian weights at the MSE-optimal 4-bit step reach the optimal SQNR."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(1000, 200), nn.Linear(8, 8))
    nn.init.normal_(model[1].weight)
    lowbit.quantize(model, "uniq", 4, weight_options={"per_channel": False})
    model[1].weight_quantizer.initialize(model[1].weight)
    errors = {e.name: e for e in weight_errors(model)}
    assert errors["1"].sqnr_db == pytest.approx(optimal_sqnr_db(16, "weight"), abs=0.1)


def test_weight_errors_on_a_zoo_model_and_a_float_model():
    model = build_model("resnet20")
    with pytest.raises(LowbitError, match="quantize it first"):
        weight_errors(model)
    lowbit.quantize(model, "apot", 4)
    errors = weight_errors(model)
    assert len(errors) == 22 and all(e.sqnr_db > 0 for e in errors)
    assert [e.bits for e in errors][:2] == [8, 4]
