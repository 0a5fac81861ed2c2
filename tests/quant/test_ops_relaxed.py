"""RQ and SRQ as ``torch.library`` operators: ``opcheck`` (schema, no output aliasing an
input, fake kernels, autograd registration, AOT dispatch) of each forward and backward
operator, on the CPU kernels and the eager formulas (the suite's two paths) and on CUDA where
there is one; and dynamo traces a quantized ResNet-20 in one graph.

RQ is stochastic through one seed tensor only, so ``opcheck``'s repeated runs agree.
"""

import pytest
import torch
import torch._dynamo

import lowbit
from lowbit.models import build_model
from lowbit.quant.dropbits import NO_MASK, mask_count, mask_runs
from lowbit.quant.logistic_grid import grid_bounds
from lowbit.quant.rq import RQQuantizer
from lowbit.quant.srq import SRQQuantizer

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device here"
    )),
]


def leaves(device, *shape, scale=0.3, channels_last=False):
    """x (values inside the grid and past its ends), alpha and sigma, requiring grad."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * scale
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return [t.to(device).requires_grad_() for t in (x, torch.tensor(0.1), torch.tensor(0.04))]


def flat(runs):
    return [value for run in runs for value in run]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_rq_operators(device, signed, channels_last):
    lo, hi = grid_bounds(4, signed)
    x, alpha, sigma = leaves(device, 2, 3, 4, 5, channels_last=channels_last)
    seed = torch.tensor(12345, dtype=torch.int64)  # on the CPU, as relaxed_quantize draws it
    torch.library.opcheck(torch.ops.lowbit.rq_quantize, (x, alpha, sigma, lo, hi, 0.7, 3.0, seed))
    grad = torch.randn(x.shape, device=device)
    detached = [t.detach() for t in (x, alpha, sigma)]
    torch.library.opcheck(
        torch.ops.lowbit.rq_backward, (grad, *detached, lo, hi, 0.7, 3.0, seed)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits,signed", [(2, True), (4, False), (8, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_srq_operators_without_masks(device, bits, signed, channels_last):
    lo, hi = grid_bounds(bits, signed)
    scale = 0.1 * (hi - lo) / 4
    x, alpha, sigma = leaves(device, 2, 3, 4, 5, scale=scale, channels_last=channels_last)
    runs = [lo, hi, NO_MASK]
    torch.library.opcheck(torch.ops.lowbit.srq_quantize, (x, alpha, sigma, None, runs))
    detached = [t.detach() for t in (x, alpha, sigma)]
    _, k = torch.ops.lowbit.srq_quantize(*detached, None, runs)
    grad = torch.randn(x.shape, device=device)
    torch.library.opcheck(
        torch.ops.lowbit.srq_backward, (grad, detached[0], k, *detached[1:], None, runs, False)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("design", ["bitwise", "endpoints"])
@pytest.mark.parametrize("gate_grad", [True, False], ids=["gates-grad", "gates-no-grad"])
def test_srq_operators_with_dropbits_gates(device, design, gate_grad):
    """Gates with a dropped level (0) and fractional ones; their gradient wanted or not."""
    runs = flat(mask_runs(4, design))
    x, alpha, sigma = leaves(device, 4, 50)
    gates = torch.linspace(1.0, 0.0, mask_count(4, design), device=device)
    gates.requires_grad_(gate_grad)
    torch.library.opcheck(torch.ops.lowbit.srq_quantize, (x, alpha, sigma, gates, runs))
    detached = [t.detach() for t in (x, alpha, sigma, gates)]
    _, k = torch.ops.lowbit.srq_quantize(*detached, runs)
    grad = torch.randn(x.shape, device=device)
    torch.library.opcheck(
        torch.ops.lowbit.srq_backward, (grad, detached[0], k, *detached[1:], runs, gate_grad)
    )


def _quantized_resnet20(method):
    torch.manual_seed(0)
    model = lowbit.quantize(build_model("resnet20", num_classes=10), method, 4)
    x = torch.randn(8, 3, 32, 32)
    model(x)  # data-initialized alpha and sigma start here, outside the compiled graph
    return model, x


@pytest.mark.parametrize("method", ["rq", "srq", "srq-dropbits"])
def test_dynamo_traces_one_graph_without_breaks(method, kernel_path):
    """RQ's seed is drawn as a tensor and DropBits' gates are sampled in the graph."""
    if kernel_path == "native":
        pytest.skip("dynamo traces with fake tensors: no kernel runs (the eager run traces)")
    model, x = _quantized_resnet20(method)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    reasons = [b.reason for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("make", [
    lambda: RQQuantizer(4, alpha=0.1), lambda: SRQQuantizer(4, alpha=0.1),
    lambda: SRQQuantizer(4, alpha=0.1, masks="bitwise"),
], ids=["rq", "srq", "srq-dropbits"])
def test_compiled_quantizer_equals_eager(make):
    """``aot_eager`` runs the traced forward and backward graphs, the operators included, in
    one graph (``fullgraph``); the same torch seed draws the same RQ noise seed and DropBits
    gates as eagerly."""
    quantizer = make()
    x0 = torch.randn(6, 4, 5, 5, generator=torch.Generator().manual_seed(0)) * 0.3
    torch._dynamo.reset()
    results = []
    for fn in (quantizer, torch.compile(quantizer, backend="aot_eager", fullgraph=True)):
        quantizer.zero_grad()
        x = x0.clone().requires_grad_()
        torch.manual_seed(1)
        out = fn(x)
        out.square().sum().backward()
        grads = [p.grad.clone() for p in quantizer.parameters()]
        results.append([out.detach(), x.grad, *grads])
    for compiled, eager in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
