"""The quantized convolutions: every float conv type has one, it computes what the float layer
computes, and weight quantizers see the output channel in dim 0 (ConvTranspose too)."""

import math

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn.layers import (
    QUANTIZED_LAYERS,
    QConv1d,
    QConvTranspose2d,
)


class Recorder(nn.Module):
    """An identity quantizer that remembers the shape it was handed."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return x * 1.0


FLOAT_LAYERS = [
    (nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), (2, 4, 9)),
    (nn.Conv1d(4, 6, 3, padding="same", padding_mode="reflect", bias=False), (2, 4, 9)),
    (nn.Conv2d(4, 6, 3, padding=1, groups=2, padding_mode="circular"), (2, 4, 7, 7)),
    (nn.Conv3d(2, 4, (1, 3, 3), stride=(1, 2, 1), padding=(0, 1, 1)), (2, 2, 3, 5, 5)),
    (nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), (2, 4, 5)),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, dilation=2, bias=False), (2, 4, 5, 5)),
    (nn.ConvTranspose3d(2, 4, 3, stride=(1, 2, 2), padding=1), (2, 2, 3, 4, 4)),
    (nn.Linear(5, 3), (2, 5)),
]


def _ids(params):
    layer, _ = params
    return f"{type(layer).__name__}-groups{getattr(layer, 'groups', 1)}"


def test_every_float_layer_type_has_a_quantized_subclass():
    expected = {
        nn.Conv1d, nn.Conv2d, nn.Conv3d,
        nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
    }
    assert set(QUANTIZED_LAYERS) == expected
    for float_type, quantized_type in QUANTIZED_LAYERS.items():
        assert issubclass(quantized_type, float_type)


@pytest.mark.parametrize("params", FLOAT_LAYERS, ids=[_ids(p) for p in FLOAT_LAYERS])
def test_identity_quantizers_give_the_float_layer(params):
    """With quantizers that change nothing the layer is the float layer: same output, same
    parameters (shared, not copied), same constructor settings; the weight quantizer sees
    (out_channels, in_channels / groups, *kernel)."""
    torch.manual_seed(0)
    layer, shape = params
    layer = layer.eval()
    weight_quantizer, input_quantizer = Recorder(), Recorder()
    q = QUANTIZED_LAYERS[type(layer)].from_float(layer, weight_quantizer, input_quantizer)
    x = torch.randn(shape)
    torch.testing.assert_close(q(x), layer(x), rtol=0, atol=0)
    assert q.weight is layer.weight and q.bias is layer.bias
    assert not q.training
    out_channels = getattr(layer, "out_channels", getattr(layer, "out_features", None))
    assert weight_quantizer.shapes[0][0] == out_channels
    if isinstance(layer, nn.modules.conv._ConvNd):
        groups = layer.groups
        assert weight_quantizer.shapes[0][1] == layer.in_channels // groups
        for name in ("stride", "padding", "dilation", "groups", "padding_mode",
                     "output_padding", "kernel_size", "transposed"):
            assert getattr(q, name) == getattr(layer, name), name
    assert input_quantizer.shapes == [shape]


def test_conv_transpose_keeps_output_size():
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1)
    q = QConvTranspose2d.from_float(layer, Recorder(), Recorder())
    x = torch.randn(1, 3, 5, 5)
    out = q(x, output_size=[10, 10])
    assert out.shape == (1, 4, 10, 10)
    torch.testing.assert_close(out, layer(x, output_size=[10, 10]), rtol=0, atol=0)


def _lsq_per_channel(bits=4):
    return lowbit.get_method("lsq").weight_quantizer(bits, per_channel=True)


def _output_channels(weight: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """The weights of each output channel of a ConvTranspose weight (in, out/groups, *k), read
    off the definition: output channel g * out/groups + j takes input channels
    g * in/groups ... (g+1) * in/groups through weight[g * in/groups : (g+1) * in/groups, j]."""
    per_in, per_out = weight.shape[0] // groups, weight.shape[1]
    return [
        weight[g * per_in:(g + 1) * per_in, j] for g in range(groups) for j in range(per_out)
    ]


@pytest.mark.parametrize("groups", [1, 2])
def test_lsq_per_channel_steps_of_conv_transpose_are_per_output_channel(groups):
    """LSQ's init 2 E|W| / sqrt(Q_P) (Esser et al. §2.1) per output channel: out_channels steps,
    each from its own channel's weights, and each channel's quantized weights on its own grid."""
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(4, 6, 3, groups=groups)
    with torch.no_grad():  # channels of very different scales, so a mix-up shows
        layer.weight.mul_(torch.logspace(-2, 1, 6 // groups).view(1, -1, 1, 1))
    q = QConvTranspose2d.from_float(layer, _lsq_per_channel(4), None)
    out = q(torch.randn(2, 4, 5, 5))
    step = q.weight_quantizer.step
    assert step.shape == (6,)
    channels = _output_channels(layer.weight.detach(), groups)
    expected = torch.stack([2 * w.abs().mean() / math.sqrt(7) for w in channels])  # Q_P = 7
    torch.testing.assert_close(step.detach(), expected)
    quantized = _output_channels(q.quantized_weight().detach(), groups)
    for values, s in zip(quantized, step.detach()):
        torch.testing.assert_close(values / s, torch.round(values / s), rtol=0, atol=1e-5)
    out.sum().backward()
    assert layer.weight.grad is not None and q.weight_quantizer.step.grad is not None


def test_qconv1d_with_lsq_per_channel_has_out_channels_steps():
    layer = nn.Conv1d(4, 6, 3)
    q = QConv1d.from_float(layer, _lsq_per_channel(), None)
    q(torch.randn(2, 4, 8))
    assert q.weight_quantizer.step.shape == (6,)


def test_state_dict_round_trip_of_a_conv_transpose():
    torch.manual_seed(0)
    source = QConvTranspose2d.from_float(nn.ConvTranspose2d(4, 6, 3), _lsq_per_channel(), None)
    x = torch.randn(2, 4, 5, 5)
    source(x)
    target = QConvTranspose2d.from_float(nn.ConvTranspose2d(4, 6, 3), _lsq_per_channel(), None)
    target.load_state_dict(source.state_dict())
    assert {"weight", "bias", "weight_quantizer.step"} <= set(source.state_dict())
    assert target.weight_quantizer.step.shape == (6,)
    torch.testing.assert_close(target.eval()(x), source.eval()(x), rtol=0, atol=0)


def test_quantize_swaps_every_conv_type():
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3), nn.ReLU(), nn.ConvTranspose1d(4, 4, 3, stride=2), nn.ReLU(),
        nn.Unflatten(1, (1, 4)), nn.Conv2d(1, 2, 3), nn.ReLU(),
        nn.ConvTranspose2d(2, 2, 3), nn.ReLU(), nn.Unflatten(1, (1, 2)),
        nn.Conv3d(1, 2, (1, 3, 3)), nn.ReLU(), nn.ConvTranspose3d(2, 2, 1), nn.Flatten(),
    )
    float_types = {index: type(module) for index, module in enumerate(model)}
    lowbit.quantize(model, "apot", 4, first_last_bits=4)
    for index, float_type in float_types.items():
        if float_type in QUANTIZED_LAYERS:
            assert type(model[index]) is QUANTIZED_LAYERS[float_type]
    out = model(torch.randn(2, 3, 10))
    out.sum().backward()
    assert model[7].weight.grad is not None


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]

    def count(*_):
        calls[0] += 1

    module.register_forward_hook(count)
    return calls


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.Conv1d(3, 4, 3), (2, 3, 8)),
        (nn.Conv3d(3, 4, 1), (2, 3, 2, 4, 4)),
        (nn.ConvTranspose1d(4, 6, 3, groups=2), (2, 4, 8)),
        (nn.ConvTranspose2d(4, 6, 3, groups=2), (2, 4, 5, 5)),
        (nn.ConvTranspose3d(3, 4, 1), (2, 3, 2, 4, 4)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "",
)
def test_eval_cache_of_the_new_types(layer, shape):
    """Quantized once per evaluation; an in-place weight change is seen (test_eval_cache.py)."""
    torch.manual_seed(0)
    q = QUANTIZED_LAYERS[type(layer)].from_float(layer, _lsq_per_channel(), None).eval()
    calls = _count_calls(q.weight_quantizer)
    x = torch.randn(shape)
    with torch.no_grad():
        first, second = q(x), q(x)
        assert calls[0] == 1
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        q.weight.mul_(-2.0)
        changed = q(x)
    assert calls[0] == 2
    with torch.enable_grad():
        fresh = q(x).detach()
    torch.testing.assert_close(changed, fresh, rtol=0, atol=0)


def test_quantizer_layout_puts_output_channels_first_and_back():
    """What export / analysis use to call a weight quantizer themselves."""
    layer = QConvTranspose2d.from_float(nn.ConvTranspose2d(4, 6, 3, groups=2), None, None)
    weight = layer.weight.detach()
    view = layer.quantizer_layout(weight)
    assert view.shape == (6, 2, 3, 3)
    for channel, expected in zip(view, _output_channels(weight, 2)):
        torch.testing.assert_close(channel, expected, rtol=0, atol=0)
    torch.testing.assert_close(layer.quantizer_layout(view), weight, rtol=0, atol=0)
    conv = QConv1d.from_float(nn.Conv1d(4, 6, 3), None, None)
    assert conv.quantizer_layout(conv.weight) is conv.weight
