"""A deploy runtime: the network rebuilt from an export, in plain PyTorch.

``load_runtime`` builds the float architecture (the zoo model the manifest names, or the one
given), decodes every quantized weight from its packed codes (``scale * levels[code]``), and
puts an ``ActivationQuantizer`` before each layer whose input was quantized. Nothing of
lowbit's fake-quant layers, quantizers or training code is used.

Values are decoded to float and the layers run in float: the arithmetic is that of the
fake-quant forward, so the logits match the trained model's. An integer kernel would instead
accumulate the level products and multiply ``alpha_w * alpha_x`` once per output (APoT §2.2,
Fig. 3), equal up to float reassociation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.codes import decode, unpack
from lowbit.export.grids import GridSpec, grid_levels, output_levels
from lowbit.export.writer import FORMAT, MANIFEST, TENSORS, VERSION, signature, weight_key
from lowbit.models import build_model
from lowbit.nn.quantize import set_submodule
from lowbit.quant.apot import project_divided
from lowbit.quant.project import (
    grid_cells,
    grid_table,
    midpoints,
    project_by_search,
    project_on_grid,
)

RULES = ("nearest", "nearest_divided", "round", "symmetric", "clip_round", "half_up")


class ActivationQuantizer(nn.Module):
    """``scale * level`` of the grid level an input rounds to, by the rule of the quantizer
    that was trained, in its arithmetic (so that near-ties round alike): ``"nearest"`` level
    by RCF's grid lookup (ties to the larger level), ``"nearest_divided"``: the APoT authors'
    ``x / scale`` then the nearer level (``project_divided``, ties to the lower),
    ``"round"``: ``x / scale`` half to even onto integer codes (LSQ, UniQ unsigned, two-sided
    PACT), ``"symmetric"``: half-integer
    codes by magnitude (UniQ Eq. 3), ``"clip_round"``: PACT's ``clamp(x, lo, hi) * (divisor /
    scale)`` half to even, times ``scale / divisor``, on levels ``k / divisor``, or
    ``"half_up"``: RQ's and SRQ's ``floor(x / scale + 1/2)`` on integer codes (ties up)."""

    def __init__(self, spec: GridSpec, rule: str, scale: torch.Tensor) -> None:
        super().__init__()
        if rule not in RULES:
            raise LowbitError(f"unknown rounding rule {rule!r} in the export; known: {RULES}")
        self.rule, self.divisor = rule, spec.get("divisor", 1)
        levels = grid_levels(spec)
        self.lo, self.hi = float(levels[0]), float(levels[-1])
        cells = grid_cells(levels) if rule == "nearest" else None
        table = None if cells is None else grid_table(levels, cells).float()
        self.register_buffer("scale", scale.float().reshape(()))
        self.register_buffer("levels", levels.float())
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale.to(x.dtype)
        if self.rule == "nearest":
            if self.table is not None:
                return project_on_grid(x, self.table * scale, self.lo, self.hi, scale)
            return project_by_search(x, self.levels * scale, midpoints(self.levels) * scale)
        if self.rule == "nearest_divided":
            return project_divided(x, scale, self.levels.to(x.dtype), self.lo < 0)
        if self.rule == "clip_round":
            clipped = x.clamp(self.lo * scale, self.hi * scale)
            return clipped.mul_(self.divisor / scale).round_().mul_(scale / self.divisor)
        code = x / scale
        if self.rule == "half_up":
            return code.add_(0.5).floor_().clamp_(self.lo, self.hi).mul_(scale)
        if self.rule == "symmetric":
            code.abs_().floor_().clamp_(max=self.hi - 0.5).add_(0.5).copysign_(x)
        else:
            code.round_().clamp_(self.lo, self.hi)
        return code.mul_(scale)

    def extra_repr(self) -> str:
        return f"{self.rule}, levels={self.levels.numel()}, scale={float(self.scale):.4g}"


class InputQuantized(nn.Module):
    """A plain layer whose input first goes through an ``ActivationQuantizer``."""

    def __init__(self, quantizer: ActivationQuantizer, layer: nn.Module) -> None:
        super().__init__()
        self.quantizer, self.layer = quantizer, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.quantizer(x))


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    """The manifest of an export directory, checked for format and version."""
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise LowbitError(f"{str(export_dir)!r} is not a lowbit export (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise LowbitError(
            f"{str(path)!r} is not a {FORMAT} v{VERSION} manifest; re-export with this lowbit"
        )
    return manifest


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an export's ``model.safetensors`` (also those written by lowbit's earlier
    hand-written writer: the same format); one clear error when the file is damaged."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise LowbitError(f"{str(path)!r} is not a readable safetensors file ({error})") from None


def load_runtime(export_dir: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The exported network, ready for inference (eval mode).

    ``model``: the float architecture to fill (a user model); by default the zoo model named
    in the manifest. It is modified in place and returned.
    """
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    tensors = read_tensors(export_dir / TENSORS)
    if model is None:
        model = _zoo_model(manifest)
    layers = manifest["layers"]
    weights = {weight_key(entry["name"]) for entry in layers if entry["weight"] is not None}
    _load_floats(model, weights, tensors["floats"], manifest["floats"])
    codes, scales = tensors["codes"], tensors["scales"]
    code_at = scale_at = 0
    for entry in layers:
        layer = _plain_layer(model, entry["name"])
        if entry["weight"] is not None:
            spec = manifest["grids"][entry["weight"]]
            code_at, scale_at = _fill_weight(layer, spec, codes, code_at, scales, scale_at)
        if entry["input"] is not None:
            spec = manifest["grids"][entry["input"]]
            quantizer = ActivationQuantizer(spec, spec["rule"], scales[scale_at])
            set_submodule(model, entry["name"], InputQuantized(quantizer, layer))
            scale_at += 1
    return model.eval()


@torch.no_grad()
def _fill_weight(
    layer: nn.Module,
    spec: GridSpec,
    codes: torch.Tensor,
    code_at: int,
    scales: torch.Tensor,
    scale_at: int,
) -> tuple[int, int]:
    """Decode ``layer``'s weight from the codes and scales at the given offsets; returns the
    offsets of the next layer."""
    count = layer.weight.numel()
    n_bytes = -(-count * spec["code_bits"] // 8)
    n_scales = layer.weight.shape[0] if spec["per_channel"] else 1
    indices = unpack(codes[code_at : code_at + n_bytes], spec["code_bits"], count)
    scale = scales[scale_at : scale_at + n_scales]
    scale = scale if spec["per_channel"] else scale.reshape(())
    layer.weight.copy_(decode(indices.view(layer.weight.shape), output_levels(spec), scale))
    return code_at + n_bytes, scale_at + n_scales


def _zoo_model(manifest: dict[str, Any]) -> nn.Module:
    info = manifest.get("model")
    if not info:
        raise LowbitError(
            "this export names no zoo model; pass the float model: load_runtime(dir, model=...)"
        )
    return build_model(
        info["name"],
        num_classes=info["num_classes"],
        in_channels=info["in_channels"],
        **info.get("options", {}),
    )


def _load_floats(
    model: nn.Module, weights: set[str], floats: torch.Tensor, expected: dict[str, Any]
) -> None:
    state = model.state_dict()
    targets = [(key, t) for key, t in state.items() if key not in weights and t.is_floating_point()]
    total = sum(t.numel() for _, t in targets)
    if len(targets) != expected["count"] or signature(targets) != expected["signature"] or (
        total != floats.numel()
    ):
        raise LowbitError(
            "the model does not match the export (its tensors' names or shapes differ); pass "
            "the architecture the export was made from"
        )
    at = 0
    with torch.no_grad():
        for _, tensor in targets:
            tensor.copy_(floats[at : at + tensor.numel()].view(tensor.shape))
            at += tensor.numel()


def _plain_layer(model: nn.Module, name: str) -> nn.Module:
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise LowbitError(f"the model has no layer {name!r} the export quantized") from None
    if type(layer) not in (nn.Conv2d, nn.Linear):
        raise LowbitError(
            f"{name} is a {type(layer).__name__}; the runtime fills plain nn.Conv2d / nn.Linear "
            "layers (pass the float model, not a quantized one)"
        )
    return layer
