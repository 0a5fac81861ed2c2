"""One network, many bit-widths: switchable BatchNorm and set_bits (AdaBits §3, CoQuant)."""

import pytest
import torch
from torch import nn

from lowbit.adaptive import SwitchableBatchNorm, make_adaptive, model_bit_widths, set_bits
from lowbit.errors import LowbitError
from lowbit.models import build_model
from lowbit.nn import QConv2d, QLinear


def quantizers(model):
    layers = [m for m in model.modules() if isinstance(m, (QConv2d, QLinear))]
    return layers[0], layers[1:-1], layers[-1]


def test_set_bits_switches_every_layer_and_batchnorm(model):
    first, middle, last = quantizers(model)
    norms = [m for m in model.modules() if isinstance(m, SwitchableBatchNorm)]
    assert len(middle) == 3 and len(norms) == 4
    for bits in (2, 5, 8):
        model.set_bits(bits)
        for layer in middle:
            assert layer.weight_quantizer.bits == bits and layer.input_quantizer.bits == bits
        assert all(norm.bits == bits for norm in norms)
        # The first and last layers stay at first_last_bits = 8.
        assert first.weight_quantizer.bits == 8 and last.weight_quantizer.bits == 8
        assert last.input_quantizer.bits == 8


def test_weights_are_shared_and_batchnorm_is_per_bit_width(model):
    keys = model.state_dict().keys()
    assert "3.weight" in keys and not any(k.startswith("3.") and "norms" in k for k in keys)
    for bits in (8, 6, 4, 2):
        assert f"4.norms.{bits}.running_mean" in keys
    assert model.state_dict()["3.input_quantizer.alpha"].shape == (4,)
    assert model_bit_widths(model) == (8, 6, 4, 2)


def test_outputs_depend_on_the_bits_and_nothing_else(model, batch):
    model.eval()
    images, _ = batch
    y8 = set_bits(model, 8)(images)
    y2 = set_bits(model, 2)(images)
    assert not torch.allclose(y2, y8)
    assert torch.equal(set_bits(model, 8)(images), y8)  # switching back leaves no trace


def test_batchnorm_copies_start_from_the_float_model():
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, width=8)
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    make_adaptive(model, [8, 4])
    for norm in model[1].norms.values():
        assert torch.all(norm.running_mean == 0.5)
    assert model[1].norms["8"].weight is not model[1].norms["4"].weight


def test_overridden_layers_keep_their_bits():
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, width=8)
    make_adaptive(model, [8, 4, 2], overrides={"7": 5})
    model.set_bits(2)
    assert model[7].weight_quantizer.bits == 5 and model[3].weight_quantizer.bits == 2


def test_methods_that_cannot_switch_and_plain_models_are_clear_errors():
    plain = build_model("small_cnn", num_classes=10, in_channels=1, width=8)
    with pytest.raises(LowbitError, match="cannot switch bit-widths.*coquant"):
        make_adaptive(plain, [8, 4], method="apot")
    with pytest.raises(LowbitError, match="adaptive.bits"):
        set_bits(nn.Sequential(nn.Linear(2, 2)), 4)
    with pytest.raises(LowbitError, match="empty"):
        make_adaptive(plain, [])
    with pytest.raises(LowbitError, match="2..8"):
        make_adaptive(plain, [8, 1])


def test_a_float_checkpoint_initializes_every_bit_widths_batchnorm():
    from lowbit.adaptive.switchable import expand_batchnorms
    from lowbit.train.checkpoint import load_matching

    torch.manual_seed(0)
    plain = build_model("small_cnn", num_classes=10, in_channels=1, width=8)
    with torch.no_grad():
        plain[4].weight.fill_(3.0)
        plain[4].running_var.fill_(2.0)
    model = make_adaptive(build_model("small_cnn", num_classes=10, in_channels=1, width=8),
                          [8, 2])
    loaded, _ = load_matching(model, expand_batchnorms(model, plain.state_dict()))
    assert "4.norms.2.running_var" in loaded
    for norm in model[4].norms.values():
        assert torch.all(norm.weight == 3.0) and torch.all(norm.running_var == 2.0)
