"""quantize() on a model defined here (not one of ours)."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit import LowbitError, QConv2d, QLinear


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.pool(self.body(self.stem(x))).flatten(1))


def test_swaps_layers_and_shares_parameters():
    model = TinyNet()
    weight = model.body[1].weight
    assert lowbit.quantize(model, "apot", bits=3) is model
    assert isinstance(model.stem, QConv2d) and isinstance(model.body[1], QConv2d)
    assert isinstance(model.head, QLinear)
    assert model.body[1].weight is weight  # no copy
    assert model.body[1].weight_quantizer.bits == 3 and model.body[1].input_quantizer.bits == 3


def test_first_and_last_layers_get_8_bits_and_the_data_input_stays_float():
    """APoT §4 as the authors' code does it: first and last layers at 8 bits by steps of
    max(W) (no weight normalization), inputs float; other methods: 8 bits of their own."""
    model = lowbit.quantize(TinyNet(), "apot", bits=2)
    for edge in (model.stem, model.head):
        assert type(edge.weight_quantizer).__name__ == "MaxScaleQuantizer"
        assert edge.weight_quantizer.bits == 8 and edge.input_quantizer is None
    assert model.body[1].weight_quantizer.levels.tolist() == [-1.0, 0.0, 1.0]  # ternary
    model = lowbit.quantize(TinyNet(), "lsq", bits=2)
    assert model.stem.weight_quantizer.bits == 8 and model.stem.input_quantizer is None
    assert model.head.weight_quantizer.bits == 8 and model.head.input_quantizer.bits == 8


@pytest.mark.parametrize("method", ["apot", "pot", "uniform"])
def test_apot_defaults_keep_a_pretrained_models_predictions(method):
    """Item 4 of issue 12: quantize(model, "apot", 4) blew the logits up x176 in eval (8-bit
    APoT with Eq. 9 on the classifier, no BatchNorm after it). Now the logits stay within the
    quantization error (a few percent at 4 bits with 8-bit first/last layers)."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        model(x)  # nothing to calibrate: RCF thresholds are fixed numbers
        reference = model(x)
        lowbit.quantize(model, method, 4)
        quantized = model(x)
    ratio = quantized.norm() / reference.norm()
    assert 0.8 < ratio < 1.25, ratio
    assert (quantized - reference).norm() / reference.norm() < 0.3


def test_first_last_none_keeps_them_float_and_overrides_by_pattern():
    model = lowbit.quantize(TinyNet(), "apot", 4, first_last_bits=None)
    assert type(model.stem) is nn.Conv2d and type(model.head) is nn.Linear
    model = lowbit.quantize(TinyNet(), "uniform", 4, overrides={"body.*": 3, "head": None})
    assert model.body[1].weight_quantizer.bits == 3
    assert type(model.head) is nn.Linear


def test_eval_mode_is_kept_and_outputs_are_quantized():
    model = TinyNet().eval()
    x = torch.randn(2, 3, 8, 8)
    reference = model(x)
    lowbit.quantize(model, "apot", 2)
    assert not model.training and not model.body[1].weight_quantizer.training
    assert not torch.allclose(model(x), reference)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    source = lowbit.quantize(TinyNet(), "apot", 4)
    with torch.no_grad():
        source.body[1].input_quantizer.alpha.fill_(5.0)
    target = lowbit.quantize(TinyNet(), "apot", 4)
    target.load_state_dict(source.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))
    assert "body.1.input_quantizer.alpha" in source.state_dict()


def test_requires_grad_semantics():
    model = TinyNet()
    model.stem.weight.requires_grad_(False)
    lowbit.quantize(model, "apot", 4)
    assert not model.stem.weight.requires_grad
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert model.stem.weight.grad is None
    assert model.body[1].weight.grad is not None
    assert model.body[1].weight_quantizer.alpha.grad is not None
    assert model.body[1].input_quantizer.alpha.grad is not None


def test_override_mapping_names_another_method_and_bits_none_keeps_the_rest_float():
    """A layer spec {"method", "bits", "weight_options"} picks that layer's quantizers alone."""
    spec = {"method": "uniform", "bits": 3, "weight_options": {"alpha": 2.0}}
    model = lowbit.quantize(TinyNet(), "apot", None, overrides={"head": spec},
                            weight_options={"alpha": 5.0})
    assert type(model.body[1]) is nn.Conv2d  # bits=None: float
    assert type(model.stem.weight_quantizer).__name__ == "MaxScaleQuantizer"  # 8-bit edge
    head = model.head.weight_quantizer
    assert (head.level_set, head.bits, head.alpha.item()) == ("uniform", 3, 2.0)
    assert model.head.input_quantizer.alpha.item() == 8.0  # uniform's default, not apot's options


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"overrides": {"head": {"bit": 3}}}, "unknown keys bit"),
        ({"overrides": {"head": {"method": "nope", "bits": 3}}}, "unknown method"),
        ({"overrides": {"head": {"bits": 9}}}, "bits of head=9"),
        ({"bits": None, "overrides": {"head": {"method": "apot"}}}, "needs bits"),
        ({"method": "nope"}, "unknown method"),
        ({"bits": 1}, "supports 2..8 bits"),
        ({"bits": 9}, "supports 2..8 bits"),
        ({"first_last_bits": 1}, "first_last_bits"),
        ({"overrides": {"missing*": 3}}, "matches no"),
    ],
)
def test_bad_input_raises_one_clear_error(kwargs, message):
    with pytest.raises(LowbitError, match=message):
        lowbit.quantize(TinyNet(), **kwargs)


def test_model_without_conv_or_linear_is_an_error():
    with pytest.raises(LowbitError, match="no convolution or linear layer"):
        lowbit.quantize(nn.Sequential(nn.ReLU()))


def test_available_methods_lists_the_apot_family():
    assert {"apot", "pot", "uniform"} <= set(lowbit.available_methods())


def test_float_downsample_keeps_strided_1x1_convs_float():
    """UniQ §5: binary networks keep the downsampling layers in full precision."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 1, stride=2), nn.Conv2d(16, 16, 1),
        nn.Flatten(), nn.Linear(16, 2),
    )
    lowbit.quantize(model, "uniq", 1, first_last_bits=None, float_downsample=True)
    assert type(model[2]) is nn.Conv2d
    assert isinstance(model[3], QConv2d)
