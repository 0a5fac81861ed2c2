"""Issue 12 item 2: layer inputs that can be negative get signed quantizers, decided per layer
from the model's graph, overridable, for every method."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.models import build_model
from lowbit.nn.calibrate import calibrate
from lowbit.nn.signedness import non_negative_inputs

METHODS_WITH_INPUTS = [m for m in lowbit.available_methods()
                       if lowbit.get_method(m).input_quantizer is not None]


class Mixed(nn.Module):
    """Inputs after ReLU (module and function), ReLU6, clamp(min=0), GELU, a shifted ReLU, a
    residual sum with a signed branch, and max-pooled / concatenated ReLU outputs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.after_relu = nn.Conv2d(8, 8, 3, padding=1)
        self.after_functional = nn.Conv2d(8, 8, 3, padding=1)
        self.after_relu6 = nn.Conv2d(8, 8, 1)
        self.after_clamp = nn.Conv2d(8, 8, 1)
        self.after_gelu = nn.Conv2d(8, 8, 1)
        self.after_shift = nn.Conv2d(8, 8, 1)
        self.after_sum = nn.Conv2d(8, 8, 1)
        self.after_pool_cat = nn.Conv2d(16, 8, 1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        a = self.after_relu(self.relu(self.stem(x)))
        b = self.after_functional(F.relu(a))
        c = self.after_relu6(F.relu6(b))
        d = self.after_clamp(c.clamp(min=0))
        e = self.after_gelu(F.gelu(d))
        f = self.after_shift(F.relu(e) - 1)
        g = self.after_sum(F.relu(f) + e)
        pooled = F.max_pool2d(F.relu(g), 1)
        h = self.after_pool_cat(torch.cat([pooled, F.relu(g)], 1))
        return self.head(F.relu(h).mean((2, 3)))


EXPECTED_SIGNED = {"after_gelu", "after_shift", "after_sum"}


def test_graph_says_which_inputs_are_non_negative():
    model = Mixed()
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    known = non_negative_inputs(model, names)
    assert {n for n in names if not known[n]} == EXPECTED_SIGNED | {"stem"}


@pytest.mark.parametrize("method", METHODS_WITH_INPUTS)
def test_every_method_quantizes_negative_inputs_with_a_signed_grid(method):
    """Negative inputs keep their sign: before the change every input quantizer was unsigned
    and zeroed them (uniq / lsq raised a TypeError for input_options={"signed": True})."""
    model = lowbit.quantize(Mixed(), method, 4)
    for name in ("after_relu", "after_functional", "after_relu6", "after_clamp",
                 "after_pool_cat"):
        assert not getattr(model, name).input_quantizer.signed, name
    for name in EXPECTED_SIGNED:
        quantizer = getattr(model, name).input_quantizer
        quantizer.train()
        x = torch.randn(4, 8, 5, 5) * 4
        if hasattr(quantizer, "observe"):
            quantizer.observe(x)
        out = quantizer(x)
        assert (out < 0).float().mean() > 0.3, (name, method)


def test_overrides_and_the_global_switch():
    model = lowbit.quantize(Mixed(), "lsq", 4, overrides={"after_gelu": {"signed_input": False},
                                                         "after_relu": {"signed_input": True}})
    assert not model.after_gelu.input_quantizer.signed
    assert model.after_relu.input_quantizer.grid == "signed"
    everywhere = lowbit.quantize(Mixed(), "lsq", 4, signed_inputs=True)
    assert everywhere.after_relu.input_quantizer.grid == "signed"
    with pytest.raises(lowbit.LowbitError, match="signed_input"):
        lowbit.quantize(Mixed(), "lsq", 4, overrides={"head": {"signed_input": "yes"}})


def test_signed_layers_are_reported_once(caplog):
    with caplog.at_level(logging.INFO, logger="lowbit"):
        lowbit.quantize(Mixed(), "apot", 4)
    lines = [r.getMessage() for r in caplog.records if "signed input" in r.getMessage()]
    assert len(lines) == 1 and all(name in lines[0] for name in EXPECTED_SIGNED)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            h = h * 2
        return self.c(torch.relu(self.b(h)))


def test_untraceable_models_get_signed_inputs():
    model = lowbit.quantize(Untraceable(), "uniq", 4)
    assert model.b.input_quantizer.grid == "symmetric"  # UniQ's signed grid (Eq. 3)
    assert model.c.input_quantizer.grid == "symmetric"


def test_mobilenetv2_expansion_convs_get_signed_inputs():
    """The expansion 1x1 convs follow a linear bottleneck (no ReLU): signed; every conv after
    a ReLU6 stays unsigned."""
    model = lowbit.quantize(build_model("mobilenetv2", num_classes=10), "uniq", 4)
    signed = {
        name for name, m in model.named_modules()
        if getattr(m, "input_quantizer", None) is not None and m.input_quantizer.signed
    }
    expansions = {f"features.{i}.conv.0.0" for i in range(2, 18)}
    assert expansions <= signed
    assert signed - expansions == {"features.18.0"}  # the last 1x1 conv, after block 17


@pytest.mark.parametrize("method", ["apot", "uniform", "uniq", "pact", "coquant"])
def test_linear_after_layernorm_is_no_longer_destroyed(method):
    """A Linear after LayerNorm: relative output error 1.2 at 8 bits (9.8 for APoT) when its
    negative inputs were zeroed; now the quantization error of 8 bits."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.LayerNorm(64), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 8)).eval()
    x = torch.randn(64, 16)
    with torch.no_grad():
        reference = model(x)
        lowbit.quantize(model, method, 8)
        calibrate(model, [x], 1)
        error = (model(x) - reference).norm() / reference.norm()
    assert model[2].input_quantizer.signed and not model[4].input_quantizer.signed
    assert model[6].input_quantizer is None or model[6].input_quantizer.signed
    assert error < 0.05, error


@pytest.mark.parametrize("activation, signed", [("relu", False), ("gelu", True)])
def test_transformer_feed_forward_after_relu_is_unsigned(activation, signed):
    """torch.fx cannot trace nn.TransformerEncoderLayer (its fused-path checks): the layer is
    read through KNOWN_INSIDES: linear2 reads activation(linear1(x)); everything after a
    LayerNorm or attention is signed."""
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation=activation,
                                       batch_first=True)
    model = nn.Sequential(nn.Linear(16, 32), nn.TransformerEncoder(layer, 2), nn.Linear(32, 4))
    lowbit.quantize(model, "lsq", 4)
    for block in model[1].layers:
        assert block.linear2.input_quantizer.signed == signed
        assert block.linear1.input_quantizer.signed
        assert block.self_attn.q_proj.input_quantizer.signed


def test_an_untraceable_block_leaves_the_rest_of_the_graph_readable():
    """Only the block with data-dependent Python is read through its children."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Untraceable(), nn.ReLU(), nn.Linear(2, 2),
                          nn.ReLU(), nn.Linear(2, 2))
    lowbit.quantize(model, "lsq", 4)
    assert model[2].a.input_quantizer.signed  # inside the untraceable block: unknown
    assert not model[4].input_quantizer.signed  # after the block's output and a ReLU
