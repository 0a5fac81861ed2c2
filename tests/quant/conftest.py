"""Every quantizer test runs twice: on the fused CPU kernels and on the eager formulas."""

import pytest
import torch


@pytest.fixture(autouse=True)
def every_kernel_path(kernel_path):  # tests/conftest.py
    return kernel_path


@pytest.fixture
def conv_batchnorm_step():
    """``step(quantizer)`` -> (loss, conv weight grad, *quantizer parameter grads) of one
    training step of conv -> BatchNorm (training mode) with ``quantizer`` on the weight, the
    same conv and data every call: what a per-layer weight rescale must leave unchanged."""

    def step(quantizer):
        torch.manual_seed(0)
        x = torch.randn(8, 3, 6, 6)
        conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        bn = torch.nn.BatchNorm2d(4, eps=1e-12)
        out = bn(torch.nn.functional.conv2d(x, quantizer(conv.weight)))
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
        loss.backward()
        return (loss.detach(), conv.weight.grad, *(p.grad for p in quantizer.parameters()))

    return step
