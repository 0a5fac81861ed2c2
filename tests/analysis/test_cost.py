"""Size, MACs and FixOPs (lowbit.analysis.cost) against APoT Table 1; docs/fixops.md derives
the conventions and lists the rows that do not reproduce."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

import lowbit
from lowbit.analysis.cost import cost_per_op, count_macs, model_cost
from lowbit.analysis.report import count, significant
from lowbit.cli import main
from lowbit.models import build_model

# APoT Table 1: (model, row, bits) -> (size in MB, FixOPs) as printed.
TABLE_1 = {
    ("resnet18", "uniform", 5): ("8.72", "781M"), ("resnet18", "uniform", 4): ("7.39", "542M"),
    ("resnet18", "uniform", 3): ("6.06", "357M"), ("resnet18", "uniform", 2): ("4.73", "225M"),
    ("resnet18", "apot", 5): ("7.22", "616M"), ("resnet18", "apot", 4): ("5.89", "437M"),
    ("resnet18", "apot", 3): ("4.56", "298M"), ("resnet18", "apot", 2): ("3.23", "198M"),
    ("resnet34", "uniform", 5): ("14.8", "1.50G"), ("resnet34", "uniform", 4): ("12.3", "1.00G"),
    ("resnet34", "uniform", 3): ("9.73", "618M"), ("resnet34", "uniform", 2): ("7.20", "340M"),
    ("resnet34", "apot", 5): ("13.3", "1.15G"), ("resnet34", "apot", 4): ("10.8", "784M"),
    ("resnet34", "apot", 3): ("8.23", "493M"), ("resnet34", "apot", 2): ("5.70", "285M"),
    ("resnet50", "uniform", 5): ("22.2", "1.67G"), ("resnet50", "uniform", 4): ("19.4", "1.11G"),
    ("resnet50", "uniform", 3): ("16.6", "680M"), ("resnet50", "uniform", 2): ("13.8", "370M"),
    ("resnet50", "apot", 5): ("16.3", "1.28G"), ("resnet50", "apot", 4): ("13.6", "866M"),
    ("resnet50", "apot", 3): ("10.8", "540M"), ("resnet50", "apot", 2): ("7.96", "308M"),
    ("resnet18", "float", 32): ("46.8", "1.82G"), ("resnet34", "float", 32): ("83.2", "3.68G"),
    ("resnet50", "float", 32): ("97.5", "4.14G"),
}
# Rows no consistent convention reproduces (docs/fixops.md): what we print instead.
SIZE_EXCEPTIONS = {
    ("resnet34", "uniform", 2): "7.19",
    ("resnet18", "float", 32): "44.6",
    ("resnet50", "float", 32): "97.7",
}
FIXOPS_EXCEPTIONS = {
    ("resnet18", "uniform", 4): "543M", ("resnet34", "uniform", 4): "1.01G",
    ("resnet34", "uniform", 2): "341M", ("resnet34", "apot", 5): "1.16G",
    ("resnet50", "apot", 4): "865M", ("resnet50", "apot", 2): "307M",
    ("resnet18", "float", 32): "1.81G", ("resnet34", "float", 32): "3.66G",
    ("resnet50", "float", 32): "4.09G",
}
ROWS = sorted(TABLE_1)


@functools.cache
def table_row_cost(model: str, row: str, bits: int):
    """The row as Table 1 prices it: APoT with 8-bit APoT first/last layers (weights and
    inputs), the other methods' (uniform) rows with float first/last layers; on the meta
    device (shapes only)."""
    with torch.device("meta"):
        net = build_model(model)
    if row == "apot":
        lowbit.quantize(net, row, bits, overrides={"conv1": 8, "fc": 8})
    elif row != "float":
        lowbit.quantize(net, row, bits, first_last_bits=None)
    return model_cost(net, torch.zeros(1, 3, 224, 224, device="meta"))


@pytest.mark.parametrize("key", ROWS, ids=["-".join(map(str, k)) for k in ROWS])
def test_table1_size_mb(key):
    """APoT Table 1 size column (MB = 2^20 bytes), every reproducible row to the printed
    digit; the three others print the value docs/fixops.md explains."""
    expected = SIZE_EXCEPTIONS.get(key, TABLE_1[key][0])
    assert significant(table_row_cost(*key).size_mb) == expected


@pytest.mark.parametrize("key", ROWS, ids=["-".join(map(str, k)) for k in ROWS])
def test_table1_fixops(key):
    """APoT Table 1 FixOPs column (§4.1: 8-bit x 8-bit = 1 FixOP): 18 of the 24 quantized
    rows to the printed digit; the others one unit of the last digit away (docs/fixops.md)."""
    printed = count(table_row_cost(*key).fixops)
    assert printed == FIXOPS_EXCEPTIONS.get(key, TABLE_1[key][1])


def test_table1_exceptions_are_within_one_percent():
    for key in set(SIZE_EXCEPTIONS) | set(FIXOPS_EXCEPTIONS):
        cost = table_row_cost(*key)
        size, fixops = TABLE_1[key]
        assert cost.size_mb == pytest.approx(float(size), rel=0.05 if key[1] == "float" else 0.01)
        unit = 1e9 if fixops.endswith("G") else 1e6
        assert cost.fixops == pytest.approx(float(fixops[:-1]) * unit, rel=0.015)


def test_apot_saves_22_percent_on_resnet50_4bit():
    """APoT abstract: 4-bit ResNet-50 costs 22% less than its uniform counterpart."""
    saving = 1 - table_row_cost("resnet50", "apot", 4).fixops / table_row_cost(
        "resnet50", "uniform", 4).fixops
    assert saving == pytest.approx(0.22, abs=0.005)


def test_fixop_prices():
    """APoT §4.1: 8x8 uniform = 1 FixOP, m x l uniform = ml/64, APoT 3/4 of that; float 1."""
    assert cost_per_op(8, 8, "uniform") == 1.0
    assert cost_per_op(4, 2, "uniform") == 8 / 64
    assert cost_per_op(4, 4, "apot") == 0.75 * 16 / 64
    assert cost_per_op(None, 4, "uniform") == cost_per_op(4, None, "apot") == 1.0


def test_macs_by_hooks_count_every_call_and_groups():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)
    model = nn.Sequential(conv, nn.ReLU(), conv, nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    counted = count_macs(model, torch.zeros(2, 4, 5, 5))
    per_call = 4 * 5 * 5 * (4 // 2) * 9  # outputs x inputs per group x kernel area
    assert counted["0"] == (2 * per_call, 2 * per_call)  # the same conv, called twice
    assert counted["4"] == (3 * 100, 3 * (2 * 100 - 1))  # linear: MACs, multiplies + adds


def test_size_counts_codes_and_float_tensors_not_counters():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(),
                          nn.Linear(8, 2))
    lowbit.quantize(model, "apot", 4, overrides={"0": 4, "3": 4})  # APoT first and last
    cost = model_cost(model, torch.zeros(1, 3, 3, 3))
    weights = (8 * 27 + 16) * 4 / 8
    # BN weight, bias, running mean, var; fc bias; alpha of 2 weight + 1 input quantizers
    others = (4 * 8 + 2 + 3) * 4
    assert cost.size_bytes == weights + others
    assert cost.params == 8 * 27 + 2 * 8 + (16 + 2) + 3


def test_counting_leaves_lazy_quantizers_alone():
    model = build_model("resnet20")
    lowbit.quantize(model, "uniq", 4)
    model_cost(model, torch.randn(1, 3, 32, 32))
    assert not model.layer1[0].conv1.input_quantizer.initialized
    assert model.layer1[0].conv1.weight_quantizer is not None


def test_cli_report_json(capsys):
    """``lowbit report --json`` prints one object with size_mb and fixops (Table 1 row)."""
    assert main(["report", "resnet18", "--method", "apot", "--bits", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert significant(result["size_mb"]) == "5.89" and count(result["fixops"]) == "437M"
    assert main(["report", "resnet18", "--method", "uniform", "--bits", "3",
                 "--first-last-bits", "float"]) == 0
    assert "6.06 MB" in capsys.readouterr().out


def test_cli_report_bad_model(capsys):
    assert main(["report", "no_such_net"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "zoo model" in err
    assert main(["report", "resnet20", "--method", "apot"]) == 2


def test_conv1d_and_transposed_convs_are_priced():
    """MACs: a Conv1d's outputs times in_channels * kernel; a ConvTranspose2d's inputs times
    out_channels * kernel area; both quantized layers are priced at their bits."""
    from lowbit.analysis.cost import count_macs

    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Unflatten(2, (2, 4)),
                          nn.ConvTranspose2d(8, 6, 4, stride=2))
    counts = count_macs(model, torch.randn(2, 4, 10))
    assert counts["0"][0] == 8 * 8 * (4 * 3)
    assert counts["3"][0] == (8 * 2 * 4) * (6 * 16)
    lowbit.quantize(model, "lsq", 4, first_last_bits=None, overrides={"3": 4})
    cost = model_cost(model, torch.randn(2, 4, 10))
    assert [layer.weight_bits for layer in cost.layers] == [None, 4]


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "preact_resnet34"])
def test_report_prices_imagenet_zoo_models_at_224(name):
    """``lowbit report MODEL`` feeds an ImageNet model ImageNet's 224 x 224, not the CIFAR
    default (UniQ's pre-activation ResNets priced at 32 x 32 showed 37.5M MACs)."""
    from lowbit.analysis.report import load_model

    _, info = load_model(name)
    assert info["image_size"] == 224
