"""Every method with a deploy grid exports: its grid is the level set of its paper, and the
deploy runtime reproduces the evaluation-mode network (RQ / SRQ / DropBits deploy their
deterministic rounding; CoQuant one trained bit-width; DropBits its learned bit-widths)."""

from __future__ import annotations

import json

import pytest
import torch

import lowbit
from lowbit.adaptive import make_adaptive
from lowbit.adaptive.switchable import set_bits
from lowbit.analysis.cost import model_cost
from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.export import export_model, load_runtime
from lowbit.export.codes import decode, encode
from lowbit.export.grids import grid_levels, output_levels, quantizer_grid
from lowbit.models import build_model
from lowbit.nn.calibrate import calibrate
from lowbit.quant.dorefa import SCHEMES, DoReFaWeightQuantizer
from lowbit.quant.pact import PACTQuantizer
from lowbit.quant.registry import methods_with
from lowbit.quant.srq import SRQQuantizer
from lowbit.train.checkpoint import save_checkpoint
from lowbit.train.config import DEFAULTS, merge

ZOO = {"name": "resnet20", "options": {}, "num_classes": 10, "in_channels": 3}


def assert_logits_match(runtime, model, batch) -> None:
    with torch.no_grad():
        expected, logits = model.eval()(batch), runtime(batch)
    assert (logits - expected).abs().max() <= 1e-4 * expected.abs().max()


def manifest(directory) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def weight_grid(directory, layer: str) -> dict:
    entries = manifest(directory)
    entry = next(e for e in entries["layers"] if e["name"] == layer)
    return entries["grids"][entry["weight"]]


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("method", methods_with("export_grid"))
def test_every_method_with_a_grid_deploys(method, bits, tmp_path, trained_like):
    model, batch = trained_like(method, bits)
    export_model(model, tmp_path / "out", ZOO)
    runtime = load_runtime(tmp_path / "out")
    assert_logits_match(runtime, model, batch)
    # plain PyTorch: no lowbit quantized layers or quantizers inside
    assert not any(type(m).__module__.startswith(("lowbit.nn", "lowbit.quant"))
                   for m in runtime.modules())
    # A middle layer stores codes of the method's bit-width.
    assert weight_grid(tmp_path / "out", "layer1.0.conv1")["code_bits"] == bits


def quantizer_levels(quantizer, weight=None) -> torch.Tensor:
    grid = quantizer_grid(quantizer, weight)
    return grid.scale * grid_levels(grid.spec).float()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_dorefa_grid_is_uniq_eq2(bits):
    """UniQ Eq. 2 (DoReFa): ``2 Quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1`` with
    ``Quantize_k(x) = round(x (2^k - 1)) / (2^k - 1)``: the levels ``2 j / (2^k - 1) - 1``."""
    weight = torch.randn(8, 4, 3, 3)
    quantizer = DoReFaWeightQuantizer(bits, rescale=False)
    paper = 2 * torch.arange(2**bits) / (2**bits - 1) - 1
    torch.testing.assert_close(quantizer_levels(quantizer, weight), paper)


def test_adabits_roundings_are_their_bins():
    """AdaBits' code (CoQuant supplement): ``min(floor(2^b u), 2^b - 1) / 2^b`` mapped by
    ``2 q - 1``: bins' left edges -1 .. 1 - 2^(1-b) ("modified"), or their centres."""
    weight, bits = torch.randn(16, 8), 3
    edges = 2 * torch.arange(2**bits) / 2**bits - 1
    modified = DoReFaWeightQuantizer(bits, scheme="modified", rescale=False)
    centered = DoReFaWeightQuantizer(bits, scheme="centered", rescale=False)
    torch.testing.assert_close(quantizer_levels(modified, weight), edges)
    torch.testing.assert_close(quantizer_levels(centered, weight), edges + 1 / 2**bits)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 5, 8])
def test_dorefa_codes_decode_to_the_quantizers_output_bit_for_bit(scheme, bits):
    """Rescaled by ``std(w) / std(q)``, the decoded codes are the quantizer's float32 output
    exactly: an ulp anywhere could move a later activation across a rounding boundary."""
    weight = torch.randn(16, 8, 3, 3)
    quantizer = DoReFaWeightQuantizer(bits, scheme=scheme)
    grid = quantizer_grid(quantizer, weight)
    levels = output_levels(grid.spec)
    codes = encode(quantizer(weight), levels, grid.scale)
    assert torch.equal(decode(codes, levels, grid.scale), quantizer(weight))


@pytest.mark.parametrize("signed", [False, True])
def test_pact_grid(signed):
    """PACT (Choi et al. 2018, Eq. 2 with DoReFa's rounding): ``round(y (2^k - 1) / alpha)
    alpha / (2^k - 1)`` on ``[0, alpha]``; two-sided, steps of ``alpha / (2^(k-1) - 1)``."""
    quantizer = PACTQuantizer(3, alpha=2.5, signed=signed)
    steps = 3 if signed else 7
    codes = torch.arange(-steps if signed else 0, steps + 1)
    torch.testing.assert_close(quantizer_levels(quantizer), codes * 2.5 / steps)
    # Half to even, as torch.round, in PACT's arithmetic: x / step two-sided, else the
    # clipped x times 1 / step (the rules of lowbit.export.runtime.ActivationQuantizer).
    assert quantizer_grid(quantizer).rule == ("round" if signed else "clip_round")


def test_srq_grid_is_the_papers():
    """Seed 004 §3.1: ``G = alpha [-2^(b-1), ..., 2^(b-1) - 1]`` for weights, from zero for
    activations; deployment (Algorithm 1) rounds to the nearest point."""
    weights, inputs = SRQQuantizer(3, alpha=0.5), SRQQuantizer(3, signed=False, alpha=0.5)
    torch.testing.assert_close(quantizer_levels(weights), 0.5 * torch.arange(-4, 4).float())
    torch.testing.assert_close(quantizer_levels(inputs), 0.5 * torch.arange(0, 8).float())
    assert quantizer_grid(inputs).rule == "half_up"  # floor(x / alpha + 1/2): ties up
    with pytest.raises(LowbitError, match="SRQQuantizer has no scale yet; calibrate"):
        quantizer_grid(SRQQuantizer(3))


def test_dropbits_deploys_the_learned_bit_widths(tmp_path):
    """SRQ §3.5: at the end of the regularized phase the levels with ``Pi < 0.5`` are dropped;
    the layer keeps the grid of the levels left. Dropping the 4-bit level of every layer
    leaves ``alpha [-4, 3]``: 3-bit codes."""
    torch.manual_seed(0)
    model = build_model("resnet20")
    lowbit.quantize(model, "srq-dropbits", 4, weight_options={"l0_lambda": 1e-3})
    batch = torch.randn(4, 3, 32, 32)
    calibrate(model, [batch], 1)
    masks = [m.masks for m in model.modules() if getattr(m, "masks", None) is not None]
    with torch.no_grad():
        for mask in masks:
            mask.logits[-1] = -4.0  # Pi of the "4 bits" level below 0.5
    hooks = lowbit.hooks(model)
    hooks.set_progress(0.5)
    assert set(hooks.learned_bits().values()) >= {"3"}
    export_model(model, tmp_path / "out", ZOO)
    grid = weight_grid(tmp_path / "out", "layer1.0.conv1")
    assert (grid["first"], grid["count"], grid["code_bits"]) == (-4, 8, 3)
    assert_logits_match(load_runtime(tmp_path / "out"), model, batch)
    # lowbit report prices the layer at the bits it stores
    layers = {layer.name: layer for layer in model_cost(model, batch[:1]).layers}
    assert layers["layer1.0.conv1"].weight_bits == 3


@pytest.fixture(scope="module")
def coquant():
    """ResNet-20 trained (one forward each, for BatchNorm statistics) at 4 and 2 bits."""
    torch.manual_seed(0)
    model = make_adaptive(build_model("resnet20"), [4, 2])
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for bits in (4, 2):
            set_bits(model, bits).train()(batch)
    return model, batch


def test_coquant_exports_one_trained_bit_width(coquant, tmp_path):
    model, batch = coquant
    with pytest.raises(LowbitError, match="switches among 4, 2 bits; export one of them"):
        export_model(model, tmp_path / "out", ZOO)
    with pytest.raises(LowbitError, match="trained at 4, 2 bits, not 3"):
        export_model(model, tmp_path / "out", ZOO, bits=3)
    assert not (tmp_path / "out").exists()
    export_model(model, tmp_path / "out", ZOO, bits=2)
    assert weight_grid(tmp_path / "out", "layer1.0.conv1")["code_bits"] == 2
    set_bits(model, 2)
    assert_logits_match(load_runtime(tmp_path / "out"), model, batch)
    set_bits(model, 4)


def test_cli_export_of_a_coquant_checkpoint(coquant, tmp_path, capsys):
    model, batch = coquant
    config = merge(DEFAULTS, {"model": {"name": "resnet20"}, "data": {"name": "cifar10"},
                              "method": "coquant", "bits": 4, "adaptive": {"bits": [4, 2]}})
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "config": config})
    assert main(["export", str(tmp_path / "best.pt"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "switches among 4, 2 bits" in err and "--bits B" in err
    assert not (tmp_path / "out").exists()
    assert main(["export", str(tmp_path / "best.pt"), "-o", str(tmp_path / "out"),
                 "--bits", "4"]) == 0
    capsys.readouterr()
    assert_logits_match(load_runtime(tmp_path / "out"), set_bits(model, 4), batch)
    assert main(["report", str(tmp_path / "best.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["export_bytes"] is None and "--bits B" in report["export_note"]


def test_bits_on_a_single_bit_width_network_is_refused(tmp_path, trained_like):
    model, _ = trained_like("apot", 4)
    with pytest.raises(LowbitError, match="single bit-width: drop it"):
        export_model(model, tmp_path / "out", ZOO, bits=4)
