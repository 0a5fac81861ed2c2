"""Per-channel steps get their final shape when the quantized layer is built, before any
optimizer or DDP wrapper exists; data only fills them in place, and a state dict of another
shape is a clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parameter import is_lazy

import lowbit
from lowbit.errors import LowbitError
from lowbit.nn.calibrate import calibrate
from lowbit.nn.layers import QConvTranspose2d, QLinear
from lowbit.quant.hooks import WeightSized
from lowbit.quant.uniq import uniq_weight_quantizer


def _model(width: int = 6) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, width, 3), nn.ReLU(),
        nn.ConvTranspose2d(width, 8, 3, groups=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 8 * 8, 5),
    )


def _steps(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if n.endswith("weight_quantizer.step")}


@pytest.mark.parametrize("method, options", [("uniq", {}), ("lsq", {"per_channel": True})])
def test_quantize_allocates_one_step_per_output_channel_before_any_data(method, options):
    torch.manual_seed(0)
    model = lowbit.quantize(_model(), method, 4, weight_options=options)
    steps = _steps(model)
    assert {name: tuple(p.shape) for name, p in steps.items()} == {
        "0.weight_quantizer.step": (4,), "2.weight_quantizer.step": (6,),
        "4.weight_quantizer.step": (8,), "7.weight_quantizer.step": (5,),
    }
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2, 3, 10, 10)
    calibrate(model, [x], 1)  # initializes in place
    model(x).sum().backward()
    optimizer.step()
    assert _steps(model) == steps  # the very same Parameter objects
    assert all(optimizer.state[p]["momentum_buffer"].shape == p.shape for p in steps.values())
    assert all(p.shape == (p.numel(),) and not is_lazy(p) for p in steps.values())


def test_state_dict_of_the_right_shape_loads_and_another_shape_is_a_clear_error():
    torch.manual_seed(0)
    source = lowbit.quantize(_model(), "uniq", 4)
    source(torch.randn(2, 3, 10, 10))
    target = lowbit.quantize(_model(), "uniq", 4)
    target.load_state_dict(source.state_dict())
    assert torch.equal(target[2].weight_quantizer.step, source[2].weight_quantizer.step)
    assert target[2].weight_quantizer.initialized

    wider = lowbit.quantize(_model(width=8), "uniq", 4)
    state = {k: v for k, v in source.state_dict().items() if "quantizer" in k}
    with pytest.raises(LowbitError, match=r"per-channel step of shape \(8,\).*2\.weight_quantizer"
                       r"\.step of the state dict \(shape \(6,\)\)"):
        wider.load_state_dict(state, strict=False)


def test_a_layer_wise_step_refuses_a_per_channel_one():
    per_channel = lowbit.quantize(_model(), "lsq", 4, weight_options={"per_channel": True})
    per_channel(torch.randn(2, 3, 10, 10))
    layer_wise = lowbit.quantize(_model(), "lsq", 4)
    with pytest.raises(LowbitError, match="layer-wise step of shape ()"):
        layer_wise.load_state_dict(per_channel.state_dict())


def test_a_quantizer_used_on_its_own_is_lazy_until_it_knows_its_channels():
    """Outside a layer the step is an UninitializedParameter (DDP refuses those) until it is
    allocated, loads a state dict or sees a tensor; after that its shape is fixed."""
    q = uniq_weight_quantizer(2)
    assert isinstance(q, WeightSized) and is_lazy(q.step)
    fresh = uniq_weight_quantizer(2)
    fresh.load_state_dict(q.state_dict())  # nothing learned yet: stays lazy
    assert is_lazy(fresh.step) and not fresh.initialized
    q.allocate(torch.Size((5, 3, 3, 3)))
    assert q.step.shape == (5,) and not q.initialized
    with pytest.raises(LowbitError, match=r"step of shape \(5,\) cannot take this tensor's"):
        q(torch.randn(4, 3, 3, 3))  # data fills the step; it never reshapes it
    step = q.step
    q(torch.randn(5, 3, 3, 3))
    assert q.initialized and q.step is step and step.shape == (5,)
    with pytest.raises(LowbitError, match=r"step of shape \(5,\) cannot take a weight"):
        q.allocate(torch.Size((4, 3)))
    lazy = uniq_weight_quantizer(2)
    lazy(torch.randn(3, 7))  # on its own, the first tensor sizes it
    assert lazy.step.shape == (3,)


def test_one_quantizer_for_two_layers_of_different_widths_is_refused():
    q = uniq_weight_quantizer(2)
    QLinear.from_float(nn.Linear(3, 4), q, None)
    with pytest.raises(LowbitError, match=r"\(4,\) cannot take a weight of shape \(6, 2, 3"):
        QConvTranspose2d.from_float(nn.ConvTranspose2d(2, 6, 3), q, None)
