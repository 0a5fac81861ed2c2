"""The elementwise quantizers' operators pass ``torch.library.opcheck``: schema, no output
aliasing an input, fake tensors (shapes, strides), autograd registration and AOT dispatch.

On the CPU each case runs on the kernels and on the formulas (the suite's ``kernel_path``
fixture); on CUDA where there is a device. Inputs: layer-wise and per-channel steps,
signed and unsigned grids, contiguous and channels-last tensors.
"""

import pytest
import torch
from torch.library import opcheck

import lowbit
from lowbit.quant.apot import rcf_op
from lowbit.quant.pact import pact_op
from lowbit.quant.project import grid_cells, grid_table
from lowbit.quant.ste import clip_backward_op
from lowbit.quant.uniq import code_range, learned_step_op

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device here"
    )),
]


def tensors(device, channels_last=False, requires_grad=True):
    """A conv weight-shaped input of values around and beyond the grids, and a gradient."""
    generator = torch.Generator().manual_seed(0)
    x, grad = (torch.randn(4, 3, 5, 5, generator=generator) * 1.5 for _ in range(2))
    if channels_last:
        x, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad))
    return x.to(device).requires_grad_(requires_grad), grad.to(device)


def scalar(value, device, requires_grad=True):
    return torch.tensor(value, device=device, requires_grad=requires_grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grid", ["symmetric", "signed", "unsigned"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_learned_step_quantize(device, grid, per_channel, channels_last):
    x, _ = tensors(device, channels_last)
    step = torch.full((4, 1, 1, 1) if per_channel else (), 0.3, device=device)
    if per_channel:
        step += torch.arange(4, device=device).view(4, 1, 1, 1) * 0.05
    q_min, q_max = code_range(grid, 3)
    opcheck(learned_step_op, (x, step.requires_grad_(), q_min, q_max, grid == "symmetric", 0.5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("alpha_gradient", ["pact", "adabits"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pact_quantize(device, signed, alpha_gradient, channels_last):
    x, _ = tensors(device, channels_last)
    opcheck(pact_op, (x, scalar(1.7, device), 4, signed, alpha_gradient))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("projection,level_set,bits,signed", [
    ("grid", "apot", 4, True), ("grid", "apot", 3, False), ("search", "pot", 6, True),
    ("divide_first", "apot", 4, True), ("divide_first", "apot", 4, False),
])
@pytest.mark.parametrize("clip_input_gradient", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_rcf_quantize(device, projection, level_set, bits, signed, clip_input_gradient,
                      channels_last):
    x, _ = tensors(device, channels_last)
    levels = lowbit.levels(level_set, bits, signed)
    cells = grid_cells(levels)
    assert (cells is None) == (projection == "search")
    table = grid_table(levels, cells).float().to(device) if projection == "grid" else None
    opcheck(rcf_op, (
        x, scalar(1.3, device), levels.float().to(device), table, signed,
        projection == "divide_first", clip_input_gradient,
    ))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("signed", [False, True])
def test_rcf_quantize_with_pact_gradient(device, signed):
    """APoT Eq. 11's alpha gradient (``alpha_gradient="pact"``), on the search projection
    that arbitrary (Lloyd) levels take."""
    x, _ = tensors(device)
    levels = lowbit.levels("apot", 4, signed).float().to(device)
    opcheck(rcf_op, (x, scalar(1.3, device), levels, None, signed, False, True, "pact"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bounds", ["scalar", "upper only", "per channel"])
@pytest.mark.parametrize("closed", [True, False])
@pytest.mark.parametrize("scale_gradient", ["rounding", "upper", "bounds", None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_clip_backward(device, bounds, closed, scale_gradient, channels_last):
    x, grad = tensors(device, channels_last, requires_grad=False)
    out = x.clamp(-1, 1).mul(4).round().div(4)
    if bounds == "per channel":
        scale = torch.linspace(0.5, 1.5, 4, device=device).view(4, 1, 1, 1)
    else:
        scale = scalar(1.1, device, requires_grad=False)
    low = None if bounds == "upper only" else -scale
    args = (grad, x, out, low, scale, closed, scale if scale_gradient else None,
            scale_gradient or "rounding")
    opcheck(clip_backward_op, args)
