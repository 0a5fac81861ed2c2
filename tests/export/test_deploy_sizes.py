"""``lowbit report CHECKPOINT`` gives the sizes of both deployments: lowbit's export (codes
packed to their bits) and the integer ONNX file, and the layers ONNX keeps float."""

from __future__ import annotations

import json

import pytest

from lowbit.analysis.report import format_sizes
from lowbit.cli import main
from lowbit.export import export_model
from lowbit.export.writer import export_size
from lowbit.train.checkpoint import save_checkpoint
from lowbit.train.config import DEFAULTS, merge

ZOO = {"name": "resnet20", "options": {}, "num_classes": 10, "in_channels": 3}


def files_size(directory) -> int:
    return sum(path.stat().st_size for path in directory.iterdir())


@pytest.mark.parametrize("method,bits", [("apot", 3), ("srq-dropbits", 2)])
def test_export_size_is_computed_in_memory_to_the_byte(method, bits, tmp_path, trained_like):
    model, _ = trained_like(method, bits)
    export_model(model, tmp_path / "out", ZOO)
    assert export_size(model, ZOO) == files_size(tmp_path / "out")


def test_report_of_a_checkpoint_gives_both_deployed_sizes(tmp_path, capsys, trained_like):
    pytest.importorskip("onnx")
    model, _ = trained_like("apot", 4)
    config = merge(DEFAULTS, {"model": {"name": "resnet20"}, "data": {"name": "cifar10"},
                              "method": "apot", "bits": 4})
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "config": config})
    assert main(["export", str(tmp_path / "best.pt"), "-o", str(tmp_path / "out"),
                 "--onnx", str(tmp_path / "model.onnx")]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "best.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # The same codes and graph; lowbit export adds the run's config to both (a few KB), for
    # lowbit eval of the deployed model.
    exported = files_size(tmp_path / "out")
    assert exported - 8192 < report["export_bytes"] <= exported
    onnx_file = (tmp_path / "model.onnx").stat().st_size
    assert onnx_file - 8192 < report["onnx_bytes"] <= onnx_file
    # The APoT authors' 8-bit first and last layers read float inputs (the image, the pool).
    assert set(report["onnx_float_layers"]) == {"conv1", "fc"}


def test_the_sizes_line():
    sizes = {"export_bytes": 2**20, "onnx_bytes": None, "onnx_float_layers": None,
             "onnx_note": "ONNX export needs onnx: pip install 'lowbit[onnx]'"}
    assert format_sizes(sizes) == (
        "deployed: lowbit export 1.00 MB; ONNX: ONNX export needs onnx: pip install "
        "'lowbit[onnx]'")
    sizes.update(onnx_bytes=3 * 2**19, onnx_float_layers={"conv1": "float input"})
    assert format_sizes(sizes) == (
        "deployed: lowbit export 1.00 MB; ONNX 1.50 MB; float in ONNX: conv1 (float input)")


def test_a_zoo_model_has_no_deployed_sizes(capsys):
    """Shapes only (the meta device): nothing to export."""
    assert main(["report", "resnet20", "--method", "apot", "--bits", "4", "--json"]) == 0
    assert "export_bytes" not in json.loads(capsys.readouterr().out)
