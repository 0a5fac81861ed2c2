"""Export (packed codes + manifest) and the deploy runtime: the runtime's logits equal the
fake-quant model's, the files are about the report's model size, bad input fails cleanly."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from torch import nn

import lowbit
from lowbit.analysis.cost import model_cost
from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.export import export_model, load_runtime
from lowbit.models import build_model
from lowbit.quant import registry
from lowbit.quant.registry import Method
from lowbit.quant.srq import SRQQuantizer
from lowbit.train.checkpoint import save_checkpoint
from lowbit.train.config import DEFAULTS, merge

ZOO = {"name": "resnet20", "options": {}, "num_classes": 10, "in_channels": 3}


def files_size(directory) -> int:
    return sum(path.stat().st_size for path in directory.iterdir())


def test_runtime_reproduces_the_apot_authors_layout(tmp_path):
    """What ``lowbit import apot-official`` builds: maxscale 8-bit first / last layers (codes
    beyond +-127 possible) and APoT with the authors' weight normalization."""
    torch.manual_seed(0)
    model = build_model("resnet20")
    first_last = {"method": "maxscale", "bits": 8}
    lowbit.quantize(model, "apot", 4, first_last_bits=None,
                    overrides={"conv1": first_last, "fc": first_last},
                    weight_options={"normalization": "detached"})
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.train()(batch)
        expected = model.eval()(batch)
    export_model(model, tmp_path / "out", ZOO)
    with torch.no_grad():
        logits = load_runtime(tmp_path / "out")(batch)
    assert (logits - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("method,bits", [("apot", 2), ("apot", 4), ("uniq", 3), ("lsq", 2)])
def test_export_size_is_the_report_size(method, bits, tmp_path, trained_like):
    """The files on disk are within 5% of lowbit report's model size."""
    model, batch = trained_like(method, bits)
    export_model(model, tmp_path / "out", ZOO)
    expected = model_cost(model, batch[:1]).size_bytes
    assert files_size(tmp_path / "out") == pytest.approx(expected, rel=0.05)


def test_manifest_records_grids_and_apot_terms(tmp_path, trained_like):
    model, _ = trained_like("apot", 3)
    export_model(model, tmp_path / "out", ZOO)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    layer = next(e for e in manifest["layers"] if e["name"] == "layer1.0.conv1")
    weights, inputs = manifest["grids"][layer["weight"]], manifest["grids"][layer["input"]]
    assert weights["levels"] == "apot" and weights["signed"] and weights["code_bits"] == 3
    assert inputs["rule"] == "nearest" and not inputs["signed"]
    assert weights["gamma"] > 0 and weights["terms"] == 1


def test_runtime_fills_a_user_model(tmp_path, trained_like):
    model, batch = trained_like("uniq", 3)
    with torch.no_grad():
        expected = model(batch)
    export_model(model, tmp_path / "out")  # no zoo entry: the caller brings the architecture
    with pytest.raises(LowbitError, match="pass the float model"):
        load_runtime(tmp_path / "out")
    with pytest.raises(LowbitError, match="does not match the export"):
        load_runtime(tmp_path / "out", build_model("resnet32"))
    runtime = load_runtime(tmp_path / "out", build_model("resnet20"))
    with torch.no_grad():
        assert torch.equal(runtime(batch), expected)


def test_export_replaces_an_earlier_export_atomically(tmp_path, trained_like):
    model, _ = trained_like("lsq", 4)
    export_model(model, tmp_path / "out", ZOO)
    first = (tmp_path / "out" / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.layer1[0].conv1.weight.mul_(-1)
    export_model(model, tmp_path / "out", ZOO)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left behind


def _assert_nothing_written(tmp_path, before):
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_input_fails_cleanly(tmp_path, trained_like, monkeypatch):
    (tmp_path / "file").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(LowbitError, match="float model"):
        export_model(build_model("resnet20"), tmp_path / "out")
    model, _ = trained_like("apot", 4)
    with pytest.raises(LowbitError, match="not a directory"):
        export_model(model, tmp_path / "file")
    with pytest.raises(LowbitError, match="holds other files"):
        export_model(model, tmp_path / "busy")

    class Custom(nn.Module):  # a layer holding a quantizer lowbit did not put there
        def __init__(self):
            super().__init__()
            self.weight_quantizer = nn.Identity()

    model.extra = Custom()
    with pytest.raises(LowbitError, match="quantized layer type export does not know"):
        export_model(model, tmp_path / "out")
    # A method whose registry entry declares no grid (every packaged one has one).
    gridless = Method("gridless", partial(SRQQuantizer, alpha=0.1), None, 2, 8, "no grid")
    monkeypatch.setitem(registry._METHODS, "gridless", gridless)
    other = build_model("resnet20")
    lowbit.quantize(other, "gridless", 4)
    with pytest.raises(LowbitError, match="method 'gridless' has no fixed integer grid.*: apot"):
        export_model(other, tmp_path / "out")
    _assert_nothing_written(tmp_path, before)


def test_a_failure_while_writing_leaves_nothing(tmp_path, monkeypatch, trained_like):
    model, _ = trained_like("lsq", 4)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lowbit.export.writer.save_file", broken)
    with pytest.raises(OSError):
        export_model(model, tmp_path / "out", ZOO)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_from_a_checkpoint(tmp_path, capsys, trained_like):
    config = merge(DEFAULTS, {"model": {"name": "resnet20"}, "data": {"name": "cifar10"},
                              "method": "apot", "bits": 3})
    model, batch = trained_like("apot", 3)
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "config": config})
    assert main(["export", str(tmp_path / "best.pt"), "-o", str(tmp_path / "out")]) == 0
    assert "MB on disk" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "best.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["name"], report["method"], report["bits"]) == ("resnet20", "apot", 3)
    assert files_size(tmp_path / "out") == pytest.approx(report["size_bytes"], rel=0.05)
    with torch.no_grad():
        assert torch.equal(load_runtime(tmp_path / "out")(batch), model(batch))
    assert main(["export", str(tmp_path / "best.pt"), "-o", str(tmp_path / "best.pt")]) == 2
    assert "not a directory" in capsys.readouterr().err
