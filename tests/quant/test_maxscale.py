"""maxscale: the APoT authors' 8-bit rule for the first and last layer (APoT §4)."""

import torch
from torch import nn

import lowbit
from lowbit.quant.maxscale import MaxScaleQuantizer, max_scaled_quantize


def test_8_bit_weights_are_multiples_of_max_over_127():
    w = torch.tensor([0.5, 0.25, 0.1, -0.2, 0.0])
    q = max_scaled_quantize(w, 8)
    torch.testing.assert_close(q, torch.tensor([127, 64, 25, -51, 0]) * 0.5 / 127)


def test_scale_is_the_largest_weight_not_the_largest_magnitude():
    """Weights below -max(W) are not clipped: their code passes -127."""
    w = torch.tensor([0.1, -0.3])
    q = max_scaled_quantize(w, 8)
    torch.testing.assert_close(q, torch.tensor([127.0, -381.0]) * 0.1 / 127)


def test_fewer_bits_use_2_to_the_b_minus_1_minus_1_steps():
    w = torch.tensor([1.0, 0.4, -0.6])
    torch.testing.assert_close(max_scaled_quantize(w, 3), torch.tensor([1.0, 1 / 3, -2 / 3]))


def test_gradient_is_straight_through():
    w = torch.randn(4, 3, requires_grad=True)
    g = torch.randn(4, 3)
    MaxScaleQuantizer(8)(w).backward(g)
    torch.testing.assert_close(w.grad, g)


def test_a_layer_without_positive_weights_passes_through():
    w = -torch.rand(5)
    torch.testing.assert_close(max_scaled_quantize(w, 8), w)


def test_registered_as_a_weight_only_method_for_overrides():
    """quantize(): a layer spec naming maxscale gets its weights quantized, its input float."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                          nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    lowbit.quantize(model, "apot", 4, overrides={"4": {"method": "maxscale", "bits": 8}})
    assert isinstance(model[4].weight_quantizer, MaxScaleQuantizer)
    assert model[4].weight_quantizer.bits == 8 and model[4].input_quantizer is None
    assert model[2].input_quantizer.bits == 4
    assert lowbit.get_method("maxscale").input_quantizer is None
