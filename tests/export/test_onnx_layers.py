"""Integer codes of each grid, and inputs rounded onto them by the ONNX graph exactly as the
trained quantizers round them (``lowbit.export.onnx_rounding``)."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from lowbit.export.codes import encode
from lowbit.export.grids import grid_levels, integer_levels, quantizer_grid
from lowbit.export.onnx import TRACE_OPSET
from lowbit.export.onnx_layers import bits_needed
from lowbit.export.onnx_rounding import rounding
from lowbit.quant.apot import RCFQuantizer
from lowbit.quant.pact import PACTQuantizer
from lowbit.quant.rq import RQQuantizer
from lowbit.quant.uniq import LearnedStepQuantizer


def eq5_eq6_levels(terms: list[list[float]]) -> torch.Tensor:
    """APoT Eq. 5 / 6 (k = 2): every sum of one value per term, divided by the largest."""
    sums = sorted({sum(choice) for choice in itertools.product(*terms)})
    return torch.tensor(sums, dtype=torch.float64) / max(sums)


# Eq. 5 (b = 4: n = 2) and Eq. 6 (b = 3: n = 1; b = 5: n = 2), the terms written out.
APOT_TERMS = {
    3: [[0, 1, 2**-1, 2**-3], [0, 2**-2]],
    4: [[0, 1, 2**-2, 2**-4], [0, 2**-1, 2**-3, 2**-5]],
    5: [[0, 1, 2**-2, 2**-5], [0, 2**-1, 2**-3, 2**-6], [0, 2**-4]],
}


@pytest.mark.parametrize(
    "bits, signed, divisor",
    # Issue 15's facts: unsigned 3-, 4-, 5-bit levels are multiples of 1/10, 1/48, 1/100; the
    # signed 4- and 5-bit weight levels (3- and 4-bit magnitudes) of 1/10 and 1/48.
    [(3, False, 10), (4, False, 48), (5, False, 100), (4, True, 10), (5, True, 48)],
)
def test_apot_levels_are_integers_over_one_divisor(bits, signed, divisor):
    codes, found = integer_levels({"levels": "apot", "bits": bits, "signed": signed})
    magnitudes = eq5_eq6_levels(APOT_TERMS[bits - 1 if signed else bits])
    expected = torch.cat([-magnitudes.flip(0)[:-1], magnitudes]) if signed else magnitudes
    assert found == divisor
    assert torch.allclose(codes.double() / divisor, expected, rtol=0, atol=1e-12)
    assert bits_needed(codes) <= 8


def test_uniq_half_integer_codes_double_to_odd_integers():
    """UniQ Eq. 3: 2**b levels +-1/2, +-3/2, ..., +-(2**b - 1)/2 steps; times 2, odd integers."""
    spec = {"levels": "integer", "first": -7.5, "count": 16, "divisor": 1}
    codes, divisor = integer_levels(spec)
    assert divisor == 2
    assert codes.tolist() == list(range(-15, 16, 2))


def test_levels_without_a_small_divisor_have_no_integer_codes():
    """PoT Eq. 3 at 5 bits reaches 2**-30: no 8-bit (or 16-bit) integer grid holds it."""
    assert integer_levels({"levels": "pot", "bits": 5, "signed": False}) is None
    assert bits_needed(integer_levels({"levels": "pot", "bits": 4, "signed": False})[0]) == 15
    assert bits_needed(torch.tensor([-152, 127])) == 9  # the APoT authors' maxscale first layer


def calibrated(quantizer: torch.nn.Module) -> torch.nn.Module:
    if isinstance(quantizer, LearnedStepQuantizer):
        quantizer.initialize(torch.ones(1))  # a numeric init: the step is that number
    return quantizer.eval()


# One quantizer per rounding rule of lowbit.export.grids (and its signed / unsigned forms).
QUANTIZERS = {
    "apot-4-unsigned": lambda: RCFQuantizer("apot", 4, False, alpha=2.7),
    "apot-3-signed": lambda: RCFQuantizer("apot", 3, True, alpha=1.3),
    "apot-5-unsigned": lambda: RCFQuantizer("apot", 5, False, alpha=3.1),
    "pot-3-unsigned": lambda: RCFQuantizer("pot", 3, False, alpha=1.9),
    "uniform-3-unsigned": lambda: RCFQuantizer("uniform", 3, False, alpha=0.77),
    "apot-4-authors": lambda: RCFQuantizer("apot", 4, False, alpha=2.7, divide_first=True),
    "apot-4-signed-authors": lambda: RCFQuantizer("apot", 4, True, 1.3, divide_first=True),
    "lsq-4-unsigned": lambda: LearnedStepQuantizer(4, "unsigned", 0.37),
    "lsq-4-signed": lambda: LearnedStepQuantizer(4, "signed", 0.21, activation=True),
    "uniq-3-symmetric": lambda: LearnedStepQuantizer(3, "symmetric", 0.43, activation=True),
    "pact-4-unsigned": lambda: PACTQuantizer(4, alpha=2.3),
    "pact-4-signed": lambda: PACTQuantizer(4, alpha=1.7, signed=True),
    "rq-3-signed": lambda: RQQuantizer(3, signed=True, alpha=0.29),
}


def probe_inputs(quantizer: torch.nn.Module) -> torch.Tensor:
    """Random inputs over and beyond the clipping range, every decision boundary of the grid
    in float32 and its two float32 neighbours (where rounding rules disagree if any do)."""
    grid = quantizer_grid(quantizer)
    levels = grid_levels(grid.spec)
    boundaries = ((levels[1:] + levels[:-1]) / 2 * grid.scale.double()).float()
    reach = float(levels.abs().max() * grid.scale) * 1.5
    random = torch.randn(100_000, generator=torch.Generator().manual_seed(0)) * reach
    inf = torch.tensor(float("inf"))
    around = torch.cat([boundaries, boundaries.nextafter(inf), boundaries.nextafter(-inf)])
    x = torch.cat([random, around, around.neg()])
    # -0.0 (the negated zero boundary of UniQ's symmetric grid) is left out: ONNX has no
    # copysign, so the graph gives it the code of +0.0 (SymmetricCode); loaders never make it.
    return x[~(x == 0) | ~x.signbit()]


def run_onnx(module: torch.nn.Module, x: torch.Tensor, path) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module, (x[:1],), str(path), dynamo=False, opset_version=TRACE_OPSET,
            input_names=["x"], dynamic_axes={"x": {0: "n"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_onnx_rounds_inputs_to_the_quantizers_codes_exactly(name, tmp_path):
    """The graph's integer codes are the codes of the trained quantizer's output, on random
    inputs and at every boundary (ties included: the same float32 arithmetic and the same
    tie rule, e.g. the APoT authors' x / alpha and ties down); its float form (a float
    layer's input) is the quantizer's output itself."""
    quantizer = calibrated(QUANTIZERS[name]())
    x = probe_inputs(quantizer)
    grid = quantizer_grid(quantizer)
    codes, divisor = integer_levels(grid.spec)
    with torch.no_grad():
        expected = quantizer(x)
    levels = encode(expected, grid_levels(grid.spec), grid.scale)
    got = run_onnx(rounding(grid, (codes, divisor)), x, tmp_path / "codes.onnx")
    assert torch.equal(got, codes[levels].float())
    got = run_onnx(rounding(grid), x, tmp_path / "values.onnx")
    assert torch.equal(got, expected)
