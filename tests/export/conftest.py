"""A calibrated quantized ResNet-20 for the export tests, built once per method and bits."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import lowbit
from lowbit.models import build_model
from lowbit.nn.calibrate import calibrate


@functools.cache
def _trained_like(method: str, bits: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("resnet20")
    lowbit.quantize(model, method, bits)
    batch = torch.randn(4, 3, 32, 32)
    calibrate(model, [batch], 1)
    with torch.no_grad():
        model.train()(batch)  # moves the running statistics away from 0 / 1
    return model.eval(), batch


@pytest.fixture
def trained_like():
    """``trained_like(method, bits) -> (model, batch)``: a quantized ResNet-20 with calibrated
    quantizers and non-trivial BatchNorm statistics (a fresh copy each call), and a batch."""

    def build(method: str, bits: int) -> tuple[nn.Module, torch.Tensor]:
        model, batch = _trained_like(method, bits)
        return copy.deepcopy(model), batch

    return build
