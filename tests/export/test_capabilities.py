"""What a method can do is declared on its registry entry (``Method.switchable``,
``Method.export_grid``), and the declarations match what its quantizers do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.adaptive.switchable import check_switchable_method
from lowbit.errors import LowbitError
from lowbit.export.grids import quantizer_grid
from lowbit.nn.calibrate import calibrate
from lowbit.quant.registry import available_methods, get_method, methods_with

EXPORTING = ["apot", "coquant", "dorefa", "lsq", "maxscale", "pact", "pot", "rq", "srq",
             "srq-dropbits", "uniform", "uniq"]
SWITCHABLE = ["coquant", "dorefa", "pact"]


def _quantized(method: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    )
    spec = get_method(method)
    # first_last_method None: every layer is this method's own (maxscale: all layers)
    lowbit.quantize(model, method, 4, first_last_bits=None if spec.first_last_method else 8)
    calibrate(model, [torch.randn(2, 3, 8, 8)], 1)
    return model


def test_declared_capabilities():
    assert methods_with("export_grid") == EXPORTING
    assert methods_with("switchable") == SWITCHABLE
    with pytest.raises(ValueError, match="unknown capability"):
        methods_with("exports")


@pytest.mark.parametrize("method", available_methods())
def test_export_grid_says_whether_quantizer_grid_answers(method):
    model = _quantized(method)
    quantizers = [(m.weight_quantizer, m.weight) for m in model.modules()
                  if getattr(m, "weight_quantizer", None) is not None]
    quantizers += [(m.input_quantizer, None) for m in model.modules()
                   if getattr(m, "input_quantizer", None) is not None]
    assert quantizers and all(q.lowbit_method == method for q, _ in quantizers)
    for quantizer, weight in quantizers:
        if get_method(method).export_grid:
            grid = quantizer_grid(quantizer, None if weight is None else weight.detach())
            assert grid.scale.numel() >= 1
        else:
            message = f"method '{method}' has no fixed integer grid.*: {', '.join(EXPORTING)}$"
            with pytest.raises(LowbitError, match=message):
                quantizer_grid(quantizer, weight)


@pytest.mark.parametrize("method", available_methods())
def test_switchable_methods_take_a_bit_width_set(method):
    spec = get_method(method)
    if not spec.switchable:
        message = f"{method!r} cannot switch.*needs one of: {', '.join(SWITCHABLE)}$"
        with pytest.raises(LowbitError, match=message):
            check_switchable_method(method)
        return
    check_switchable_method(method)
    for factory in (spec.weight_quantizer, spec.input_quantizer):
        quantizer = factory(8, bit_widths=(8, 4, 2))
        quantizer.set_bits(2)
        assert quantizer.bits == 2


def test_a_hand_built_quantizer_is_described_by_its_class():
    """Quantizers built outside lowbit.quantize carry no method: known classes still export,
    others get the list of methods that do."""
    step = lowbit.get_method("lsq").weight_quantizer(4)
    step(torch.randn(3, 5))
    assert quantizer_grid(step).spec["levels"] == "integer"
    with pytest.raises(LowbitError, match=r"Identity \(not built by lowbit.quantize\)"):
        quantizer_grid(nn.Identity())
