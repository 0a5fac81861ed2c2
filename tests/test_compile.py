"""``torch.compile`` of a quantized ResNet-20: one graph, no break, results equal to eager.

The graph check traces with dynamo (``torch._dynamo.explain``): each quantizer is one
``lowbit`` operator in the graph, opaque to dynamo (``torch.library.custom_op``). The
equality check compiles with ``backend="aot_eager"``, which runs the traced forward and
backward graphs on eager kernels, so it needs no C++ compiler; the operators run their CPU
implementations there, as in eager mode. Data-initialized step sizes (UniQ) are set by one
eager forward first, as a training run's first step would; dynamo recompiles once they are.
"""

import copy

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

import lowbit
from lowbit.models import build_model

# The operator of each method's quantizers (PACT's weights are DoReFa's: traced formulas).
OPERATORS = {"apot": "rcf_quantize", "uniq": "learned_step_quantize", "pact": "pact_quantize"}


def _quantized_resnet20(method: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = lowbit.quantize(build_model("resnet20", num_classes=10), method, 4)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    model(x)  # data-initialized quantizers start here, outside the compiled graph
    return model, x, y


@pytest.mark.parametrize("method", OPERATORS)
def test_compiling_makes_one_graph_without_breaks(method):
    model, x, _ = _quantized_resnet20(method)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    reasons = [b.reason for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1
    assert f"torch.ops.lowbit.{OPERATORS[method]}" in explanation.graphs[0].code


@pytest.mark.parametrize("method", OPERATORS)
def test_compiled_forward_and_backward_equal_eager(method):
    model, x, y = _quantized_resnet20(method)
    twin = copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(twin, backend="aot_eager")
    for net in (model, compiled):
        F.cross_entropy(net(x), y).backward()
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
