"""Quantized evaluation quantizes each weight once, and never serves a stale weight."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.quant.dorefa import DoReFaWeightQuantizer


def _model(method: str = "apot", bits: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 5),
    )
    return lowbit.quantize(model, method, bits).eval()


def _count_weight_quantizations(model: nn.Module) -> list[int]:
    calls = [0]

    def count(*_):
        calls[0] += 1

    for module in model.modules():
        if getattr(module, "weight_quantizer", None) is not None:
            module.weight_quantizer.register_forward_hook(count)
    return calls


def _fresh(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output computed with autograd on, which never reuses a stored weight."""
    with torch.enable_grad():
        return model(x).detach()


@pytest.mark.parametrize("no_autograd", [torch.no_grad, torch.inference_mode])
def test_weights_are_quantized_once_per_evaluation(no_autograd):
    model, x = _model(), torch.randn(4, 3, 6, 6)
    calls = _count_weight_quantizations(model)
    with no_autograd():
        outputs = [model(x) for _ in range(5)]
    assert calls[0] == 3  # three layers, once each, not once per batch
    for out in outputs:
        torch.testing.assert_close(out, _fresh(model, x), rtol=0, atol=0)


def test_training_and_autograd_quantize_every_forward():
    model, x = _model(), torch.randn(4, 3, 6, 6)
    calls = _count_weight_quantizations(model)
    model(x)
    model(x)  # eval mode, but autograd is on: gradients must reach the weights
    with torch.no_grad():
        model.train()
        model(x)
        model(x)
    assert calls[0] == 4 * 3


def test_weights_changed_in_eval_mode_are_requantized():
    model, x = _model(), torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        before = model(x)
        model[2].weight.mul_(-2.0)  # in place, as an optimizer or an EMA update would
        after = model(x)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, _fresh(model, x), rtol=0, atol=0)


def test_load_state_dict_and_quantizer_parameters_invalidate():
    model, other, x = _model(), _model(), torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        model(x)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(x), _fresh(other, x), rtol=0, atol=0)
        model[2].weight_quantizer.alpha.fill_(1.5)  # a learned clipping level
        torch.testing.assert_close(model(x), _fresh(model, x), rtol=0, atol=0)


def test_switching_bits_invalidates():
    """A switchable quantizer (CoQuant) evaluated at one bit-width after another."""
    layer = lowbit.QConv2d.from_float(
        nn.Conv2d(3, 4, 3), DoReFaWeightQuantizer(4, bit_widths=[4, 2]), None
    ).eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        four = layer(x)
        layer.weight_quantizer.set_bits(2)
        two = layer(x)
    assert not torch.equal(four, two)
    torch.testing.assert_close(two, _fresh(layer, x), rtol=0, atol=0)


def test_writes_through_data_need_train_or_eval():
    """``.data`` bypasses version counters; toggling the mode drops the stored weight."""
    model, x = _model(), torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        model(x)
        model[2].weight.data.mul_(-2.0)
        model.eval()
        torch.testing.assert_close(model(x), _fresh(model, x), rtol=0, atol=0)


def test_data_initialized_step_sizes_are_cached_after_their_first_use():
    """UniQ's step is set from the weight on the first forward; the stored weight is the
    one computed with that step."""
    model, x = _model("uniq", 2), torch.randn(4, 3, 6, 6)
    calls = _count_weight_quantizations(model)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert calls[0] == 3
    torch.testing.assert_close(first, second, rtol=0, atol=0)
