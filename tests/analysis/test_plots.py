"""``lowbit plot``: PNG files with the quantization levels, clipping curves and a sweep's
accuracy against bit-width (skipped without matplotlib)."""

from __future__ import annotations

import json

import pytest
import torch

import lowbit
from lowbit.analysis.plots import chosen_layers, clipping_curves, histogram_panels, sweep_points
from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.models import build_model

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG) and len(data) > 20_000  # axes, text and bars, not a blank


def test_panels_show_what_each_quantizer_sees():
    torch.manual_seed(0)
    model = build_model("resnet20")
    lowbit.quantize(model, "apot", 3)
    layers = chosen_layers(model, 4)
    assert len(layers) == 4 and all(m.weight_quantizer.bits == 3 for _, m in layers)
    weights, activations = histogram_panels(model, torch.randn(2, 3, 32, 32), 4)
    assert [p.levels.numel() for p in weights] == [7] * 4  # signed 3-bit APoT: 2^3 - 1
    assert [p.levels.numel() for p in activations] == [8] * 4
    (name, series), *_ = clipping_curves(model, 4)
    alphas, ratio = series["normalized weights (Eq. 9)"]
    assert ratio[0] == 1.0 and ratio[-1] == 0.0 and bool((ratio.diff() <= 0).all())
    # Fig. 4a: on the same alpha axis the raw weights' ratio collapses near 0 (Kaiming std
    # 0.1 or less), the normalized weights' falls gently.
    _, raw = series["weights W"]
    assert raw[len(raw) // 10] < 0.01 < ratio[len(ratio) // 10]


def _write_sweep(directory):
    for i, (method, bits, top1) in enumerate(
        [("apot", 2, 88.0), ("apot", 3, 90.5), ("apot", 4, 91.2), ("lsq", 4, 90.9)]
    ):
        run = directory / f"run{i}"
        run.mkdir(parents=True)
        summary = {"model": "resnet20", "method": method, "bits": bits, "top1": top1,
                   "float_top1": 91.6 if method == "apot" else None}
        (run / "summary.json").write_text(json.dumps(summary))


def test_sweep_points(tmp_path):
    _write_sweep(tmp_path / "sweep")
    points = sweep_points(tmp_path / "sweep")
    assert points["resnet20 apot"] == [(2, 88.0), (3, 90.5), (4, 91.2)]
    assert points["resnet20 float"] == [(32, 91.6)]
    with pytest.raises(LowbitError, match="no run directories"):
        sweep_points(tmp_path)


def test_cli_plot_writes_readable_pngs(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    assert main(["plot", "resnet20", "--method", "apot", "--bits", "3",
                 "-o", str(tmp_path / "figs")]) == 0
    for name in ("weights.png", "activations.png", "clipping.png"):
        assert _is_png(tmp_path / "figs" / name)
    _write_sweep(tmp_path / "sweep")
    assert main(["plot", str(tmp_path / "sweep"), "-o", str(tmp_path / "figs")]) == 0
    assert _is_png(tmp_path / "figs" / "accuracy.png")
    assert capsys.readouterr().out.count("wrote") == 4


def test_srq_weights_plot_on_their_grid_without_an_integer_export(tmp_path):
    """SRQ Fig. 2: weight histograms with the grid points, for a method with no integer
    export (the plot reads each quantizer's own grid)."""
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    model = build_model("lenet5")
    lowbit.quantize(model, "srq", 3, first_last_bits=None)
    model(torch.randn(2, 1, 28, 28))  # alpha set from data
    weights, _ = histogram_panels(model, None, 2)
    assert [p.levels.tolist() for p in weights] == [list(range(-4, 4))] * 2
    assert main(["plot", "lenet5", "--method", "srq", "--bits", "3", "--layers", "2",
                 "-o", str(tmp_path)]) == 0
    assert _is_png(tmp_path / "weights.png")
