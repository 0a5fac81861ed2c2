"""ONNX export with integer convolutions, run on onnxruntime, and ``lowbit eval --onnx``."""

from __future__ import annotations

import functools
import json
import sys

import pytest
import torch
from torch import nn

import lowbit
from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.export.bit_width import single_bit_width
from lowbit.export.onnx import export_onnx, onnx_summary, read_metadata
from lowbit.export.onnx_runtime import load_onnx
from lowbit.models import build_model
from lowbit.nn.calibrate import calibrate
from lowbit.train.build import model_from_config, quantize_from_config
from lowbit.train.checkpoint import save_checkpoint
from lowbit.train.config import resolve_config

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

METHOD_BITS = [
    (method, bits) for method in ("apot", "pot", "uniform", "uniq", "lsq") for bits in (2, 3, 4)
] + [("dorefa", 4), ("pact", 4), ("rq", 3), ("srq", 3), ("srq-dropbits", 3), ("coquant", 4)]
EIGHT_BIT = (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)


@functools.cache
def _small_model(method: str, bits: int) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=3, width=8)
    lowbit.quantize(model, method, bits)
    batch = torch.randn(16, 3, 8, 8)
    calibrate(model, [batch], 1)
    with torch.no_grad():
        model.train()(batch)  # BatchNorm statistics away from 0 / 1, so folding shows
    return single_bit_width(model.eval(), None)  # CoQuant: the bit-width it runs at


def images(n: int, side: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method, bits", METHOD_BITS)
def test_onnxruntime_logits_equal_the_fake_quant_models(method, bits, tmp_path):
    """onnxruntime's logits are the fake-quant model's up to float reassociation: the model
    sums float products of on-grid values, the graph sums exact integer products and scales
    once per channel (BatchNorm folded in), so they differ by float32 rounding (~1e-7 of the
    logits here). An input within that rounding of a decision boundary could round one step
    differently in a deeper layer; on these images none does."""
    model = _small_model(method, bits)
    path = export_onnx(model, tmp_path / "m.onnx", images(1))
    with torch.no_grad():
        expected = model(images(32))
    got = load_onnx(path)(images(32))
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)
    # Integer layers in every graph but PoT 4-bit's (activation codes up to 16384: float).
    assert read_metadata(path)["integer_layers"] or (method, bits) == ("pot", 4)


def value_types(graph) -> dict[str, int]:
    """ONNX element type of every value (after shape inference) and initializer."""
    inferred = onnx.shape_inference.infer_shapes(onnx.ModelProto(graph=graph, opset_import=[
        onnx.helper.make_opsetid("", 21)], ir_version=10)).graph
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.value_info}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


@pytest.mark.parametrize("method", ["apot", "lsq"])
def test_every_quantized_convolution_consumes_integer_codes(method, trained_like, tmp_path):
    """ResNet-20: every conv with a quantized input and weight is ConvInteger / MatMulInteger
    on 8-bit tensors (input codes cast from the rounding, weight codes from 4-bit indices),
    every BatchNorm is folded, and the only float convolutions are the layers the file lists
    (the first conv: its input is the image)."""
    model, _ = trained_like(method, 4)
    path = export_onnx(model, tmp_path / "r20.onnx", images(1, 32))
    graph = onnx.load(str(path)).graph
    types = value_types(graph)
    producer = {output: node for node in graph.node for output in node.output}
    integer = [node for node in graph.node if node.op_type in ("ConvInteger", "MatMulInteger")]
    metadata = read_metadata(path)
    assert len(integer) == len(metadata["integer_layers"]) == (21 if method == "lsq" else 20)
    for node in integer:
        if node.op_type == "ConvInteger":  # int8 inputs, uint8 weights: the fast type pair
            assert len(node.input) == 4  # with their zero points
            assert types[node.input[0]] == onnx.TensorProto.INT8
            assert types[node.input[1]] == onnx.TensorProto.UINT8
        else:
            assert len(node.input) == 2  # zero points 0
            assert types[node.input[0]] in EIGHT_BIT and types[node.input[1]] in EIGHT_BIT
        assert producer[node.input[0]].op_type == "Cast"
        decode = producer.get(node.input[1])  # Gather(table, Cast(UINT4 indices)), 4-bit grids
        if decode is None:
            assert node.op_type == "MatMulInteger" and method == "lsq"  # LSQ's 8-bit fc
        else:
            assert decode.op_type == "Gather"
            assert types[producer[decode.input[1]].input[0]] == onnx.TensorProto.UINT4
    ops = [node.op_type for node in graph.node]
    assert "BatchNormalization" not in ops and "DequantizeLinear" not in ops
    float_convs = ops.count("Conv") + ops.count("Gemm")
    assert float_convs == len(metadata["float_layers"]) == (1 if method == "lsq" else 2)
    assert "conv1" in metadata["float_layers"]
    # Half a byte per weight of the 4-bit layers (one for LSQ's 8-bit fc: 640 weights).
    stored = sum(len(t.raw_data) for t in graph.initializer if t.data_type in EIGHT_BIT + (
        onnx.TensorProto.UINT4,))
    assert stored < 0.51 * sum(p.numel() for p in model.parameters())


def test_first_layer_codes_wider_than_8_bits_stay_float_and_are_named(tmp_path):
    """The APoT authors' maxscale first layer (codes beyond -127 when min(W) < -max(W))
    cannot be a ConvInteger: it is exported as a float Conv and the summary says why."""
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=3, width=8)
    lowbit.quantize(model, "apot", 4, first_last_bits=8)
    model[0].weight_quantizer = lowbit.quant.maxscale.MaxScaleQuantizer(8)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = -3 * model[0].weight.max()
    calibrate(model, [images(4)], 1)
    path = export_onnx(model.eval(), tmp_path / "m.onnx", images(1))
    assert "0 (float input; weight codes -381..127 need 10 bits)" in onnx_summary(path)


def test_metadata_and_a_file_without_a_config(tmp_path, capsys):
    path = export_onnx(_small_model("lsq", 4), tmp_path / "m.onnx", images(1), {"bits": 4})
    metadata = load_onnx(path, threads=1).metadata
    assert metadata["format"] == "lowbit-onnx" and metadata["bits"] == 4
    assert main(["eval", "--onnx", str(path)]) == 2
    assert "holds no lowbit run config" in capsys.readouterr().err


def make_checkpoint(path, stage="quant", **settings):
    """A small_cnn on the embedded digits, quantized as ``settings`` say unless ``stage`` is
    float (calibrated on random inputs, BatchNorm statistics moved)."""
    values = {"model.options.width": 8, **settings}
    config = resolve_config(None, [f"{key}={value}" for key, value in values.items()])
    torch.manual_seed(0)
    model = model_from_config(config, 10, 1)
    if stage == "quant":
        quantize_from_config(model, config)
    digits = torch.randn(16, 1, 8, 8).abs()
    calibrate(model, [digits], 1)
    with torch.no_grad():
        model.train()(digits)
    save_checkpoint(path, {"model": model.state_dict(), "config": config, "stage": stage})


@pytest.mark.parametrize("method", ["apot", "uniq"])
def test_lowbit_eval_onnx_measures_what_lowbit_eval_measures(method, tmp_path, capsys):
    """``lowbit export --onnx`` then ``lowbit eval --onnx`` (onnxruntime) and ``lowbit eval
    EXPORT_DIR`` (the pure-PyTorch runtime): the checkpoint's data loaders (from the run
    config stored at export), the same metrics and the same output line."""
    make_checkpoint(tmp_path / "c.pt", method=method, bits=3)
    onnx_file = tmp_path / "deploy" / "m.onnx"
    assert main(["export", str(tmp_path / "c.pt"), "-o", str(tmp_path / "d"),
                 "--onnx", str(onnx_file)]) == 0
    assert f"wrote {onnx_file}: 3 integer layers" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "c.pt"), "--json", "--device", "cpu"]) == 0
    checkpoint = json.loads(capsys.readouterr().out)
    assert main(["eval", "--onnx", str(onnx_file), "--json", "--threads", "1"]) == 0
    deployed = json.loads(capsys.readouterr().out)
    # The export directory on the pure-PyTorch deploy runtime (no onnxruntime): the same.
    assert main(["eval", str(tmp_path / "d"), "--json"]) == 0
    decoded = json.loads(capsys.readouterr().out)
    for result in (deployed, decoded):
        for key in ("top1", "top5", "n", "model", "method", "bits", "data"):
            assert result[key] == checkpoint[key], key
        assert result["loss"] == pytest.approx(checkpoint["loss"], rel=1e-5)
    assert main(["eval", str(tmp_path / "d"), "--bits", "3"]) == 2
    assert "an export directory is evaluated alone; drop --bits" in capsys.readouterr().err
    assert main(["eval", "--onnx", str(onnx_file), "--batch-size", "7"]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"small_cnn {method} 3-bit on digits ({checkpoint['n']} test images)")


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, capsys):
    make_checkpoint(tmp_path / "c.pt", method="lsq", bits=4)
    make_checkpoint(tmp_path / "lloyd.pt", method="lloyd", bits=3)
    make_checkpoint(tmp_path / "float.pt", stage="float")
    (tmp_path / "a-file").write_text("")
    before = set(tmp_path.iterdir())
    out = ["-o", str(tmp_path / "d"), "--onnx", str(tmp_path / "m.onnx")]
    cases = [
        (["export", str(tmp_path / "float.pt"), *out], "float model"),
        (["export", str(tmp_path / "lloyd.pt"), *out], "'lloyd' has no fixed integer grid"),
        (["export", str(tmp_path / "c.pt"), "-o", str(tmp_path / "d"), "--onnx",
          str(tmp_path)], "is a directory"),
        (["export", str(tmp_path / "c.pt"), "-o", str(tmp_path / "d"), "--onnx",
          str(tmp_path / "a-file" / "m.onnx")], "is a file, not a directory"),
        (["eval", "--onnx", str(tmp_path / "none.onnx")], "is not a file"),
        (["eval", "--onnx", str(tmp_path / "a-file")], "onnxruntime cannot load"),
        (["eval", str(tmp_path / "c.pt"), "--onnx", str(tmp_path / "a-file")], "drop CHECKPOINT"),
        (["eval"], "give lowbit eval a CHECKPOINT"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert set(tmp_path.iterdir()) == before


class Bessel(nn.Module):
    """An operation the TorchScript ONNX exporter has no form for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x)


def test_models_without_an_integer_deployment_are_one_line_errors(tmp_path, monkeypatch):
    float_model = build_model("small_cnn", in_channels=3, width=8).eval()
    with pytest.raises(LowbitError, match="float model"):
        export_onnx(float_model, tmp_path / "m.onnx", images(1))
    no_grid = build_model("small_cnn", in_channels=3, width=8)
    lowbit.quantize(no_grid, "lloyd", 3)  # its levels are learned per layer: no grid spec
    with pytest.raises(LowbitError, match="'lloyd' has no fixed integer grid"):
        export_onnx(no_grid.eval(), tmp_path / "m.onnx", images(1))
    pot5 = build_model("small_cnn", in_channels=3, width=8)
    lowbit.quantize(pot5, "pot", 5)
    calibrate(pot5, [images(4)], 1)
    with pytest.raises(LowbitError, match="no regular grid of decision boundaries"):
        export_onnx(pot5.eval(), tmp_path / "m.onnx", images(1))
    bessel = nn.Sequential(_small_model("lsq", 4), Bessel())
    with pytest.raises(LowbitError, match="cannot express this model: Exporting the operator"):
        export_onnx(bessel, tmp_path / "m.onnx", images(1))
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(LowbitError, match=r"pip install 'lowbit\[onnx\]'"):
        export_onnx(_small_model("lsq", 4), tmp_path / "m.onnx", images(1))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "x.onnx").write_bytes(b"")
    with pytest.raises(LowbitError, match=r"needs onnxruntime: pip install 'lowbit\[onnx\]'"):
        load_onnx(tmp_path / "x.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]
