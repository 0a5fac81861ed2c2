"""Size and FixOPs (lowbit.analysis.cost) against APoT Table 3, the ablation on ResNet-18 /
ImageNet, in the style of test_cost.py (Table 1); docs/fixops.md explains the one row that
does not reproduce."""

from __future__ import annotations

import functools
import json

import pytest
import torch

import lowbit
from lowbit.analysis.cost import model_cost
from lowbit.analysis.report import count, significant
from lowbit.cli import main
from lowbit.models import build_model

# APoT Table 3: (level set, bits, weight options of the row) -> (MODEL SIZE, FIXOPS) as printed.
# The "RCF" cross (clipping: max) and "WN" cross (normalize: false) change no cost.
TABLE_3 = {
    ("apot", 5, ()): ("7.22", "616M"),
    ("pot", 5, ()): ("7.22", "582M"),
    ("uniform", 5, ()): ("7.22", "781M"),
    ("lloyd", 5, ()): ("7.22", "1.81G"),
    ("apot", 3, ()): ("4.56", "298M"),
    ("uniform", 3, ()): ("4.56", "357M"),
    ("lloyd", 3, ()): ("4.56", "1.81G"),
    ("apot", 3, (("normalize", False),)): ("4.56", "198M"),
    ("apot", 5, (("clipping", "max"),)): ("7.22", "616M"),
    ("lloyd", 3, (("clipping", "max"),)): ("4.56", "1.81G"),
}
# The WN-cross row prints Table 1's 2/2 FixOPs (198M); at 3/3 bits the weights' normalization
# changes no operation, so its cost is the APoT 3/3 row's (docs/fixops.md).
FIXOPS_EXCEPTIONS = {("apot", 3, (("normalize", False),)): "298M"}
ROWS = sorted(TABLE_3, key=str)


@functools.cache
def row_cost(method: str, bits: int, options: tuple):
    """A row as Table 1's APoT rows are priced (test_cost.py, docs/fixops.md): the method at
    ``bits`` with 8-bit first and last layers of the same method, weights and inputs; on the
    meta device."""
    with torch.device("meta"):
        net = build_model("resnet18")
    lowbit.quantize(net, method, bits, overrides={"conv1": 8, "fc": 8},
                    weight_options=dict(options))
    return model_cost(net, torch.zeros(1, 3, 224, 224, device="meta"))


@pytest.mark.parametrize("key", ROWS, ids=[str(k) for k in ROWS])
def test_table3_size_and_fixops(key):
    """Table 3's MODEL SIZE (MB = 2^20 bytes) and FIXOPS columns to the printed digit; Lloyd's
    arbitrary levels cost a float multiply each (its 1.81G is the float model's count) and its
    codebooks are not counted in the size (7.22 / 4.56 MB, as the APoT rows)."""
    size, fixops = TABLE_3[key]
    cost = row_cost(*key)
    assert significant(cost.size_mb) == size
    assert count(cost.fixops) == FIXOPS_EXCEPTIONS.get(key, fixops)


def test_lloyd_is_priced_as_the_float_model():
    with torch.device("meta"):
        net = build_model("resnet18")
    float_ops = model_cost(net, torch.zeros(1, 3, 224, 224, device="meta")).fixops
    lloyd = row_cost("lloyd", 5, ())
    assert lloyd.fixops == pytest.approx(float_ops, rel=1e-3)
    assert {layer.levels for layer in lloyd.layers[1:-1]} == {"lloyd"}


def test_cli_report_of_a_lloyd_row(capsys):
    assert main(["report", "resnet18", "--method", "lloyd", "--bits", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert significant(result["size_mb"]) == "4.56" and count(result["fixops"]) == "1.81G"
