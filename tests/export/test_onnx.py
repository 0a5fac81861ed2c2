"""ONNX QuantizeLinear / DequantizeLinear export of uniformly quantized models."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.export.grids import quantizer_grid
from lowbit.export.onnx import QuantizeDequantize, export_onnx, qdq_model, uniform_steps


@pytest.mark.parametrize("method", ["lsq", "uniq", "uniform"])
def test_qdq_pairs_reproduce_each_quantizer(method, trained_like):
    """Clip + QuantizeLinear + DequantizeLinear (as PyTorch runs it) gives the input
    quantizer's output up to inputs within float rounding of a decision boundary (one step
    off), and keeps the on-grid weights."""
    model, _ = trained_like(method, 4)
    layer = model.layer2[0].conv1
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0)).abs() * 2
    grid = quantizer_grid(layer.input_quantizer)
    step, first, count = uniform_steps(grid.spec, grid.scale)
    with torch.no_grad():
        expected = layer.input_quantizer(x)
        got = QuantizeDequantize(step, first, count, clip=True)(x)
    off = (got - expected).abs() > 1e-6
    assert off.float().mean() < 1e-4
    assert torch.allclose((got - expected)[off].abs(), step.expand(int(off.sum())), rtol=1e-4)

    weight = layer.weight.detach()
    grid = quantizer_grid(layer.weight_quantizer, weight)
    with torch.no_grad():
        on_grid = layer.weight_quantizer(weight)
        kept = QuantizeDequantize(*uniform_steps(grid.spec, grid.scale), clip=False)(on_grid)
    assert torch.allclose(kept, on_grid, rtol=1e-6, atol=1e-7 * float(on_grid.abs().max()))


@pytest.mark.parametrize("method", ["lsq", "uniq", "uniform"])
def test_qdq_model_keeps_the_predictions(method, trained_like):
    model, batch = trained_like(method, 4)
    with torch.no_grad():
        assert torch.equal(qdq_model(model)(batch).argmax(1), model(batch).argmax(1))


def test_apot_levels_are_not_quantize_linear(tmp_path, trained_like):
    model, batch = trained_like("apot", 4)
    with pytest.raises(LowbitError, match="needs uniform levels"):
        export_onnx(model, tmp_path / "m.onnx", batch)
    assert list(tmp_path.iterdir()) == []


def test_onnxruntime_agrees_on_top1_for_uniform_4bit_resnet20(tmp_path, trained_like):
    """A uniform 4-bit ResNet-20 (LSQ grid) through onnxruntime gives PyTorch's top-1."""
    onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    model, _ = trained_like("lsq", 4)
    batch = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    path = export_onnx(model, tmp_path / "resnet20.onnx", batch[:1])
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") == 21  # every input but the image's, quantized at run time
    assert ops.count("DequantizeLinear") == 21 + 22  # ... and the 22 layers' int8 weights
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(torch.tensor(t.dims).prod()) for t in int8) >= 270_000  # one byte a weight
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": batch.numpy()})
    with torch.no_grad():
        expected = model(batch)
    assert torch.equal(torch.from_numpy(logits).argmax(1), expected.argmax(1))
