"""Per-layer weight and input bits (``weight_bits`` / ``input_bits`` in an override): SRQ
Table 3's "Fixed" column trains each layer's learned weight bits with the activations at the
initial bits (seed 004 §4.3: "only weights are heterogeneously quantized, and the bit-width
for activations is fixed to the initial one")."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit import LowbitError


def _net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 3))


def test_weight_and_input_bits_are_set_apart():
    model = lowbit.quantize(_net(), "srq-dropbits", 3, 3, overrides={
        "2": {"weight_bits": 2},
        "5": {"weight_bits": 4, "input_bits": 2},
    })
    assert (model[0].weight_quantizer.bits, model[0].input_quantizer) == (3, None)  # data in
    assert (model[2].weight_quantizer.bits, model[2].input_quantizer.bits) == (2, 3)
    assert (model[5].weight_quantizer.bits, model[5].input_quantizer.bits) == (4, 2)
    assert model[2].weight_quantizer.masks.bits == 2  # DropBits masks of the 2-bit grid
    model(torch.randn(2, 1, 8, 8)).sum().backward()


def test_input_bits_null_leaves_the_input_float():
    model = lowbit.quantize(_net(), "uniq", 4, overrides={"2": {"input_bits": None}})
    assert model[2].input_quantizer is None and model[2].weight_quantizer.bits == 4
    assert model[5].input_quantizer is not None


def test_ternary_weights_in_an_override():
    """Table 3's "T": the 2-bit weight grid alpha {-1, 0, 1}, activations at the run's bits."""
    model = lowbit.quantize(_net(), "srq-dropbits", 3, 3, overrides={
        "5": {"weight_bits": 2, "weight_options": {"ternary": True}}})
    quantizer = model[5].weight_quantizer
    assert (quantizer.lo, quantizer.hi, quantizer.masks) == (-1, 1, None)
    levels = (quantizer(model[5].weight) / quantizer.alpha).detach().unique()
    assert set(levels.tolist()) <= {-1.0, 0.0, 1.0} and len(levels) == 3


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"weight_bits": 9}, "weight bits of 2=9"),
        ({"input_bits": 1}, "input bits of 2=1"),
        ({"weight_bits": 3, "weight_options": {"ternary": True}}, "ternary grid"),
        ({"weight_options": {"ternary": True, "l0_lambda": 1e-3}}, "no bit level"),
    ],
)
def test_bad_layer_bits_are_one_clear_error(spec, message):
    with pytest.raises(LowbitError, match=message):
        lowbit.quantize(_net(), "srq-dropbits", 2, 2, overrides={"2": spec})
