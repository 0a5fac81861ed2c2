"""Model size, MACs, FixOPs and BitOPs per layer, counted by hooks on a sample input.

The conventions reproduce APoT Table 1 (derivation and the rows that do not reproduce:
``docs/fixops.md``):

* **Size**: every floating-point tensor of the state dict at its own width (32 bits for
  float32), except the weights of quantized layers, which take the bits of their codes
  (``stored_weight_bits``: what ``lowbit export`` stores, which can differ from the nominal
  bit-width once the weights are trained). Integer
  buffers (BatchNorm's ``num_batches_tracked``) are training counters and do not count, nor
  do the codebooks of ``FLOAT_LEVELS`` quantizers (APoT Table 3 gives its Lloyd rows the size
  of the APoT rows, 7.22 and 4.56 MB: codes counted, 2**b levels per quantizer not).
  ``size_mb`` is in units of 2**20 bytes, as Table 1's "MB".
* **MACs**: multiply-accumulates of every ``nn.Conv2d`` / ``nn.Linear`` call (others, e.g.
  BatchNorm or pooling, are not priced, as in Table 1).
* **FixOPs** (APoT §4.1): one FixOP is one 8-bit x 8-bit multiply (64 binary operations).
  A layer whose weight and input are both quantized costs ``w_bits * a_bits / 64`` per
  operation, times ``COST_FACTOR`` of its weight levels (APoT's shift-add weights: 3/4 of a
  uniform multiply of the same width, the ratio Table 1 prices them at). A layer with a float
  weight or a float input (the first layer reads the image) costs 1 per operation (a float
  model's "FixOPs" are its FLOPs), and so does one whose weight levels are arbitrary floats
  (``FLOAT_LEVELS``: Lloyd's, which APoT Table 3 prices at the float model's 1.81G).
  Operations are MACs for convolutions and ``(2 * in_features - 1) * out_features``
  (multiplies and adds) for linear layers, the count Table 1 was made with.
* **BitOPs**: MACs times ``w_bits * a_bits``, float operands counted as 32 bits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.grids import code_bits, has_grid, quantizer_grid
from lowbit.nn.layers import QUANTIZED_TYPES

# Layers priced by their multiply-accumulates: every convolution and linear layer.
PRICED = (nn.modules.conv._ConvNd, nn.Linear)

FLOAT_BITS = 32
MB = 2**20  # APoT Table 1's "MB" (derived in docs/fixops.md)
# Price of one multiply relative to a uniform one of the same bit-widths (APoT Table 1 and
# Table 3: APoT 616M vs uniform 781M for ResNet-18 at 5 bits; PoT 582M).
COST_FACTOR = {"uniform": 1.0, "apot": 0.75, "pot": 0.70}
# Weight levels that are arbitrary floats (a codebook), whose multiplies are float multiplies.
FLOAT_LEVELS = frozenset({"lloyd"})


@dataclass(frozen=True)
class LayerCost:
    """One ``nn.Conv2d`` / ``nn.Linear``: what it holds and what one sample costs.

    ``weight_bits`` (the bits of the stored codes, ``stored_weight_bits``) / ``input_bits``
    are ``None`` for float; ``levels`` names the weight level family (``uniform``, ``apot``,
    ``pot``).
    """

    name: str
    kind: str
    params: int
    weight_bits: int | None
    input_bits: int | None
    levels: str
    macs: int
    ops: int
    fixops: float
    bitops: int
    weight_bytes: float


@dataclass(frozen=True)
class ModelCost:
    """Totals over a model (``size_bytes`` counts every tensor, see the module docstring)."""

    layers: list[LayerCost]
    params: int
    size_bytes: float
    macs: int
    fixops: float
    bitops: int

    @property
    def size_mb(self) -> float:
        return self.size_bytes / MB

    def to_dict(self) -> dict:
        """Plain values for JSON: totals plus one entry per layer."""
        return {
            "params": self.params,
            "size_bytes": self.size_bytes,
            "size_mb": self.size_mb,
            "macs": self.macs,
            "fixops": self.fixops,
            "bitops": self.bitops,
            "layers": [asdict(layer) for layer in self.layers],
        }


def quantizer_bits(quantizer: nn.Module | None) -> int | None:
    """Bit-width of a quantizer (``None`` for float), read from its ``bits`` attribute."""
    if quantizer is None:
        return None
    if not isinstance(getattr(quantizer, "bits", None), int):
        raise LowbitError(
            f"{type(quantizer).__name__} has no integer 'bits' attribute to price it by; "
            "give the quantizer one"
        )
    return quantizer.bits


def stored_weight_bits(quantizer: nn.Module | None, weight: torch.Tensor) -> int | None:
    """Bits of one weight code as ``lowbit export`` stores it: the code width of the
    quantizer's grid (``lowbit.export.grids.code_bits``) once the weight holds values and the
    quantizer its scale, else the quantizer's nominal ``bits`` (a zoo model on the meta device,
    as the paper tables are priced). The two differ where the grid depends on the trained
    values: the APoT authors' ``maxscale`` rule (steps of max(W), not max|W|, nothing clipped)
    gives a weight below -max(W) a code beyond -127, so their official ResNet-20's 8-bit first
    layer has codes -152..127 and stores 9 bits; DropBits' learned bit-widths store fewer."""
    bits = quantizer_bits(quantizer)
    ready = getattr(quantizer, "initialized", True)
    if bits is None or weight.is_meta or not ready or not has_grid(quantizer):
        return bits
    return code_bits(quantizer_grid(quantizer, weight.detach()).spec)


def weight_levels(quantizer: nn.Module | None) -> str:
    """Level family of a weight quantizer: RCF quantizers name theirs, the rest are uniform."""
    return getattr(quantizer, "level_set", "uniform")


def cost_per_op(weight_bits: int | None, input_bits: int | None, levels: str) -> float:
    """FixOPs of one operation (APoT §4.1; see the module docstring)."""
    if weight_bits is None or input_bits is None or levels in FLOAT_LEVELS:
        return 1.0
    return weight_bits * input_bits / 64 * COST_FACTOR.get(levels, 1.0)


@contextmanager
def _float_forward(model: nn.Module) -> Iterator[None]:
    """Detach every quantizer for one forward: shapes are all the counting needs, and a
    quantizer that initializes itself on its first input must not see the sample."""
    detached = []
    for module in model.modules():
        if isinstance(module, QUANTIZED_TYPES):
            detached.append((module, module.weight_quantizer, module.input_quantizer))
            module.weight_quantizer = module.input_quantizer = None
    try:
        yield
    finally:
        for module, weight_quantizer, input_quantizer in detached:
            module.weight_quantizer, module.input_quantizer = weight_quantizer, input_quantizer


def count_macs(model: nn.Module, sample: torch.Tensor) -> dict[str, tuple[int, int]]:
    """``{layer name: (MACs, operations)}`` per sample for every convolution (transposed ones
    too) and Linear called on ``sample`` (a batch; counts are divided by its size). Runs one
    forward in eval mode. A convolution's MACs are its output elements times the inputs each
    one sums (``weight[0]``); a transposed one's, its input elements times the outputs each one
    feeds (its ``weight[0]`` too, ``(out/groups, *kernel)``)."""
    counts: dict[str, list[int]] = {}
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        per_sample = output.numel() // output.shape[0]
        if isinstance(module, nn.modules.conv._ConvNd):
            if module.transposed:
                per_sample = inputs[0].numel() // inputs[0].shape[0]
            macs = per_sample * module.weight[0].numel()
            ops = macs
        else:
            macs = per_sample * module.in_features
            ops = per_sample * (2 * module.in_features - 1)
        entry = counts.setdefault(names[module], [0, 0])
        entry[0] += macs
        entry[1] += ops

    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if isinstance(module, PRICED)
    ]
    was_training = model.training
    try:
        with _float_forward(model), torch.no_grad():
            model.eval()(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: (macs, ops) for name, (macs, ops) in counts.items()}


def model_cost(model: nn.Module, sample: torch.Tensor) -> ModelCost:
    """Size, MACs, FixOPs and BitOPs of ``model`` (quantized or float) on ``sample``.

    Works on any model, including one on the ``meta`` device (only shapes are used).
    """
    counted = count_macs(model, sample)
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, PRICED):
            continue
        weight_quantizer = getattr(module, "weight_quantizer", None)
        w_bits = stored_weight_bits(weight_quantizer, module.weight)
        a_bits = quantizer_bits(getattr(module, "input_quantizer", None))
        levels = weight_levels(weight_quantizer)
        macs, ops = counted.get(name, (0, 0))
        weight = module.weight
        stored_bits = weight.element_size() * 8 if w_bits is None else w_bits
        layers.append(
            LayerCost(
                name=name,
                kind=type(module).__name__,
                params=sum(p.numel() for p in (weight, module.bias) if p is not None),
                weight_bits=w_bits,
                input_bits=a_bits,
                levels=levels,
                macs=macs,
                ops=ops,
                fixops=ops * cost_per_op(w_bits, a_bits, levels),
                bitops=macs * (FLOAT_BITS if w_bits is None else w_bits)
                * (FLOAT_BITS if a_bits is None else a_bits),
                weight_bytes=weight.numel() * stored_bits / 8,
            )
        )
    layer_weights = {_prefixed(layer.name, "weight") for layer in layers}
    codebooks = {
        _prefixed(name, "levels") for name, module in model.named_modules()
        if getattr(module, "level_set", None) in FLOAT_LEVELS
    }
    other_bytes = sum(
        tensor.numel() * tensor.element_size()
        for key, tensor in model.state_dict().items()
        if tensor.is_floating_point() and key not in layer_weights | codebooks
    )
    return ModelCost(
        layers=layers,
        params=sum(p.numel() for p in model.parameters()),
        size_bytes=sum(layer.weight_bytes for layer in layers) + other_bytes,
        macs=sum(layer.macs for layer in layers),
        fixops=sum(layer.fixops for layer in layers),
        bitops=sum(layer.bitops for layer in layers),
    )


def _prefixed(module_name: str, key: str) -> str:
    return f"{module_name}.{key}" if module_name else key
