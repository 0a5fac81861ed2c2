"""Quantization error analysis: APoT Eq. 14 (clipping vs projection), Fig. 4a (clipping ratio
against alpha), per-layer SQNR (UniQ Table 1 convention) and QEM against RCF (App. C.1,
Fig. 6, ``lowbit analyze``)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import lowbit
from lowbit.analysis.analyze import plot_error_split
from lowbit.analysis.error import (
    clip_projection_error,
    clipping_ratio,
    eq14_totals,
    qem_alpha,
    threshold_comparisons,
    threshold_error,
    weight_errors,
)
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


def test_eq14_at_a_threshold_and_qem_by_hand():
    """Ternary levels {-1, 0, 1} on four +-1 and one +-3 (App. C.1): below alpha = 2 every
    value lands on +-alpha, so Eq. 14's total is (8 (alpha - 1)^2 + 2 (3 - alpha)^2) / 10,
    least at alpha = 7/5 (0.64); there the 1s are projected (8 x 0.4^2 / 10 = 0.128) and
    the 3s clipped (2 x 1.6^2 / 10 = 0.512). Above 2 the 1s fall to 0 (total >= 0.8)."""
    x = torch.tensor([1.0, 1.0, 1.0, 1.0, 3.0, -1.0, -1.0, -1.0, -1.0, -3.0])
    ternary = torch.tensor([-1.0, 0.0, 1.0])
    clip, projection = threshold_error(x, 1.4, ternary)
    assert clip == pytest.approx(0.512, rel=1e-6)
    assert projection == pytest.approx(0.128, rel=1e-6)
    assert qem_alpha(x, ternary) == pytest.approx(1.4, abs=1e-4)
    with pytest.raises(LowbitError, match="positive value"):
        qem_alpha(torch.zeros(4), ternary)


@pytest.mark.parametrize("level_set,bits,signed", [
    ("apot", 4, True), ("pot", 5, True), ("uniform", 2, True), ("apot", 3, False),
])
def test_qem_search_totals_are_eq14_of_the_quantizer(level_set, bits, signed):
    """QEM's search sums Eq. 14 from sorted running sums; each total equals the split of the
    quantizer's own output (``threshold_error``, RCF's operator) at that alpha, the levels
    without a zero level (Lloyd's) included."""
    torch.manual_seed(0)
    x = torch.randn(3000) * 1.3
    alphas = torch.tensor([0.3, 1.0, 2.2, 5.0])
    for levels in (lowbit.levels(level_set, bits, signed),
                   torch.tensor([-0.9, -0.4, -0.1, 0.1, 0.4, 0.9])):
        direct = [sum(threshold_error(x, float(a), levels, signed)) for a in alphas]
        assert eq14_totals(x, alphas, levels, signed).tolist() == pytest.approx(direct, abs=1e-6)
        if not signed:
            break


def test_qem_has_the_least_error_and_rcf_layers_are_compared(tmp_path):
    """Fig. 6: each RCF layer's own alpha against QEM's; QEM's total is the smaller (it is
    the minimum), and the authors' 8-bit first and last layers (no alpha) are left out."""
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, width=8)
    lowbit.quantize(model, "apot", 3)
    rows = threshold_comparisons(model)
    assert len(rows) == len(weight_errors(model)) - 2 and {row.bits for row in rows} == {3}
    for row in rows:
        assert row.alpha == 3.0  # the registry's start, on normalized weights
        assert row.qem_clip_mse + row.qem_projection_mse <= row.clip_mse + row.projection_mse
    pytest.importorskip("matplotlib")
    (ax,) = plot_error_split(rows, tmp_path / "fig6.png", "small_cnn apot 3-bit").axes
    assert ax.get_xlabel() == "layer" and "Eq. 14" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == [row.name for row in rows]
    assert len(ax.patches) == 4 * len(rows)  # clipping and projection bars, alpha and QEM
    with pytest.raises(LowbitError, match="apot, pot, uniform or lloyd"):
        threshold_comparisons(lowbit.quantize(build_model("small_cnn"), "uniq", 3))


def test_cli_analyze_prints_plots_and_reads_a_run_directory(tmp_path, capsys):
    from lowbit.cli import main
    from lowbit.train.config import resolve_config
    from lowbit.train.run import run_training

    summary = run_training(resolve_config(None, [
        f"out={tmp_path}", "float_epochs=0", "epochs=1", "max_steps=2", "data.limit=128",
        "data.eval_limit=32", "model.options.width=8", "weight_options.clipping=max",
    ]))
    capsys.readouterr()
    png = tmp_path / "fig6.png"
    assert main(["analyze", summary["run_dir"], "--json", "--plot", str(png)]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["model"] == "small_cnn apot 4-bit" and result["layers"]
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 20_000
    assert main(["analyze", "small_cnn", "--method", "apot", "--bits", "4"]) == 0
    table = capsys.readouterr().out
    assert "QEM alpha" in table and len(table.splitlines()) == 2 + len(result["layers"])
    assert main(["analyze", "small_cnn", "--method", "uniq", "--bits", "4"]) == 2
    assert "apot, pot, uniform or lloyd" in capsys.readouterr().err
