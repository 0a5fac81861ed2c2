"""``lowbit report`` prices a trained layer at the bits its export stores: the APoT authors'
8-bit first layer (steps of max(W), not max|W|, nothing clipped) can need 9."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit
from lowbit.analysis.cost import model_cost
from lowbit.cli import main
from lowbit.export import export_model

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
OFFICIAL_3BIT = SHARED / "checkpoints" / "apot-official" / "res20_3bit.pth.tar"


def authors_layout(device: str = "cpu") -> nn.Module:
    """APoT 4-bit with the authors' 8-bit ``maxscale`` first and last layers (the default)."""
    with torch.device(device):
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                              nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    return lowbit.quantize(model, "apot", 4)


def test_a_first_layer_beyond_minus_max_is_priced_at_its_9_bit_codes(tmp_path):
    """The authors' rule (REFERENCE-FACTS: "divided by max(w) (not max |w|), 127 steps, no
    clipping"): a weight of -1.2 max(W) takes the code round(-1.2 * 127) = -152, so the codes
    -152..127 need 9 bits; report and export agree on them."""
    torch.manual_seed(0)
    model = authors_layout()
    with torch.no_grad():
        first = model[0].weight
        first.copy_(first.clamp(-0.1, 0.1))
        first.view(-1)[0], first.view(-1)[1] = 0.1, -0.12
    sample = torch.zeros(1, 3, 8, 8)
    layers = {layer.name: layer for layer in model_cost(model, sample).layers}
    assert layers["0"].weight_bits == 9
    assert layers["0"].weight_bytes == first.numel() * 9 / 8
    assert layers["2"].weight_bits == 4 and layers["5"].weight_bits == 8
    export_model(model, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    grid = manifest["grids"][manifest["layers"][0]["weight"]]
    assert (grid["first"], grid["code_bits"]) == (-152, 9)


def test_shapes_only_are_priced_at_the_nominal_bits():
    """On the meta device (``lowbit report MODEL --method M``, the paper tables) nothing is
    known of the weights: the layer is priced at its 8 bits, as APoT Table 1 does."""
    cost = model_cost(authors_layout("meta"), torch.zeros(1, 3, 8, 8, device="meta"))
    assert cost.layers[0].weight_bits == 8


def authors_code_bits(weight: torch.Tensor) -> int:
    """Bits of the codes ``round(w / max(w) * 127)`` (the authors' rule, REFERENCE-FACTS), two's
    complement."""
    codes = torch.round(weight / weight.max() * 127)
    return 8 if codes.min() >= -128 else 9


@pytest.mark.skipif(not OFFICIAL_3BIT.is_file(), reason="../shared is absent")
def test_the_official_resnet20_first_and_last_layers(tmp_path, capsys):
    """The APoT authors' 3-bit ResNet-20, imported: its 8-bit first conv has codes down to
    -130 and its fc down to -145, both 9 bits; the report prices what the rule gives."""
    path = str(tmp_path / "r20.pt")
    assert main(["import", "apot-official", str(OFFICIAL_3BIT), "--bits", "3", "-o", path]) == 0
    capsys.readouterr()
    state = torch.load(path, weights_only=True)["model"]
    assert main(["report", path, "--json"]) == 0
    layers = {layer["name"]: layer for layer in json.loads(capsys.readouterr().out)["layers"]}
    for name in ("conv1", "fc"):
        assert layers[name]["weight_bits"] == authors_code_bits(state[f"{name}.weight"]) == 9
    assert layers["layer1.0.conv1"]["weight_bits"] == 3
