"""bf16 / fp16 inputs are quantized in float32 (autocast, half-precision models)."""

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.models import build_model
from lowbit.quant.apot import rcf_quantize
from lowbit.quant.registry import available_methods


def test_bf16_activations_go_to_the_nearest_apot_level():
    """APoT Eq. 7 on bf16 inputs: each value goes to its nearest level of alpha * Q(1, 4),
    as a float64 argmin decides it; a bf16 position x * 96 / alpha would misplace some."""
    levels = lowbit.levels("apot", 4)
    alpha = torch.tensor(2.7)
    x = (torch.rand(20_000, dtype=torch.float64) * 3).to(torch.bfloat16)
    got = rcf_quantize(x, alpha, levels, signed=False)
    grid = alpha.double() * levels.double()
    u = x.double().clamp(max=float(grid[-1]))
    expected = grid[(u[:, None] - grid).abs().argmin(1)].to(torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, expected)


@pytest.mark.parametrize("method", [m for m in available_methods() if m != "maxscale"])
def test_quantized_resnet20_trains_under_bf16_autocast_and_channels_last(method):
    """One forward/backward of ResNet-20 under CPU bf16 autocast, channels_last: finite
    logits and gradients for every parameter that gets one."""
    torch.manual_seed(0)
    model = lowbit.quantize(build_model("resnet20", num_classes=10), method, 4)
    model = model.to(memory_format=torch.channels_last)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(logits).all()
    assert grads and all(torch.isfinite(g).all() for g in grads)
