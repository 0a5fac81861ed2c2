"""``export_model``: a quantized model as packed integer codes + scales (safetensors, written
with the ``safetensors`` package) and a JSON manifest, written atomically.

An export directory holds two files:

* ``model.safetensors``: ``codes`` (uint8: every quantized layer's weight codes packed to
  their bit-width, layer after layer, each starting on a byte), ``scales`` (float32: per
  layer the weight scale, one value or one per output channel, then the input scale when the
  input is quantized), ``floats`` (float32: every other floating-point tensor of the state
  dict, BatchNorm included, in state-dict order) and ``terms.<grid>`` (uint8: the
  powers-of-two exponents of each APoT / PoT level, ``lowbit.export.grids.pot_terms``).
* ``manifest.json``: the model to rebuild (zoo name and options) and, per quantized layer,
  the grid of its weights and of its input and the rounding rule of its input.

Tensors are concatenated rather than stored one per name so that the files stay within a few
percent of the model size ``lowbit report`` computes, even for small networks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save, save_file
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.bit_width import single_bit_width
from lowbit.export.codes import encode, pack
from lowbit.export.grids import GridSpec, code_bits, output_levels, pot_terms, quantizer_grid
from lowbit.files import current_umask
from lowbit.nn.layers import QConv2d, QLinear

FORMAT, VERSION = "lowbit-export", 1
MANIFEST, TENSORS = "manifest.json", "model.safetensors"
QUANTIZER_KEYS = ("weight_quantizer", "input_quantizer")


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every QConv2d / QLinear; any other module holding a quantizer is
    a layer type the export cannot rebuild, and a model without quantized layers is float."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, (QConv2d, QLinear)):
            layers.append((name, module))
        elif any(getattr(module, key, None) is not None for key in QUANTIZER_KEYS):
            raise LowbitError(
                f"{name} is a {type(module).__name__}, a quantized layer type export does not "
                "know; only QConv2d and QLinear (lowbit.quantize) can be exported"
            )
    if not any(layer.weight_quantizer is not None for _, layer in layers):
        raise LowbitError(
            f"{type(model).__name__} is a float model: quantize it first (lowbit.quantize, or "
            "a checkpoint of a quantized run)"
        )
    return layers


def weight_key(layer_name: str) -> str:
    """The state-dict key of a layer's weight."""
    return f"{layer_name}.weight" if layer_name else "weight"


def float_tensors(
    model: nn.Module, layer_weights: set[str]
) -> list[tuple[str, torch.Tensor]]:
    """The state dict's floating-point tensors other than the quantized layers' weights and
    the quantizers' own tensors, in order: what the float architecture needs besides codes."""
    tensors = []
    for key, tensor in model.state_dict().items():
        parts = key.split(".")
        if key in layer_weights or any(part in QUANTIZER_KEYS for part in parts):
            continue
        if tensor.is_floating_point():
            if tensor.dtype != torch.float32:
                raise LowbitError(f"{key} is {tensor.dtype}; export a float32 model (.float())")
            tensors.append((key, tensor))
    return tensors


def signature(tensors: list[tuple[str, torch.Tensor]]) -> str:
    """A short hash of the names and shapes, to check that a rebuilt model matches."""
    text = ";".join(f"{key}:{list(tensor.shape)}" for key, tensor in tensors)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Grids:
    """Distinct grids (a level-set spec plus ``per_channel`` for weights or ``rule`` for
    inputs), numbered in order of first use."""

    def __init__(self) -> None:
        self.specs: list[GridSpec] = []

    def index(self, spec: GridSpec) -> int:
        if spec not in self.specs:
            self.specs.append(spec)
        return self.specs.index(spec)

    def manifest_and_terms(self) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
        """Manifest entries (the spec, ``code_bits`` and, APoT / PoT, ``gamma``, the number of
        ``terms`` per level and their ``term_bits``) and the packed term tables: exponent + 1
        per term, 0 for a zero term, at the smallest width that holds them."""
        entries, tables = [], {}
        for i, spec in enumerate(self.specs):
            entry = {**spec, "code_bits": code_bits(spec)}
            terms = pot_terms(spec)
            if terms is not None:
                exponents, gamma = terms
                width = int(exponents.max() + 1).bit_length()
                entry.update(gamma=gamma, terms=exponents.shape[1], term_bits=width)
                tables[f"terms.{i}"] = pack(exponents + 1, width)
            entries.append(entry)
        return entries, tables


@torch.no_grad()
def _layer_codes(
    name: str, layer: nn.Module, grids: _Grids, scales: list[torch.Tensor]
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """The manifest entry of one layer (grid numbers of its weight and input, ``None`` when
    float) and its packed weight codes; appends its scales to ``scales``."""
    entry: dict[str, Any] = {"name": name, "weight": None, "input": None}
    packed = None
    if layer.weight_quantizer is not None:
        weight = layer.weight.detach().float()
        grid = quantizer_grid(layer.weight_quantizer, weight)
        codes = encode(layer.weight_quantizer(weight), output_levels(grid.spec), grid.scale)
        packed = pack(codes, code_bits(grid.spec))
        entry["weight"] = grids.index({**grid.spec, "per_channel": grid.scale.dim() == 1})
        scales.append(grid.scale.reshape(-1))
    if layer.input_quantizer is not None:
        grid = quantizer_grid(layer.input_quantizer)
        if grid.scale.dim() != 0:
            raise LowbitError(f"{name}: per-channel input scales cannot be exported")
        entry["input"] = grids.index({**grid.spec, "rule": grid.rule})
        scales.append(grid.scale.reshape(-1))
    return entry, packed


def export_model(
    model: nn.Module,
    out_dir: str | Path,
    model_info: dict[str, Any] | None = None,
    bits: int | None = None,
    run: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (quantized, trained) to ``out_dir``; returns the directory.

    ``model_info`` (``{"name", "options", "num_classes", "in_channels"}``) lets
    ``load_runtime`` rebuild the architecture from the zoo; without it, ``load_runtime`` needs
    the float model. ``bits``: for a network trained at several bit-widths (CoQuant), the one
    to export (``lowbit.export.bit_width.single_bit_width``). ``run``: the checkpoint's run
config and labels (``lowbit.export.onnx.checkpoint_metadata``), from which ``lowbit eval
EXPORT_DIR`` builds the data loaders. ``out_dir`` may not exist yet, be
    empty, or hold an earlier export (it is replaced); the new export appears complete or not
    at all.
    """
    out_dir = Path(out_dir)
    _check_target(out_dir)
    tensors, manifest = export_contents(model, model_info, bits)
    if run is not None:  # what lowbit eval EXPORT_DIR needs (not counted by export_size)
        manifest["run"] = run
    with _atomic_directory(out_dir) as staging:
        save_file(tensors, str(staging / TENSORS), {"format": FORMAT})
        (staging / MANIFEST).write_text(manifest_text(manifest))
    return out_dir


def export_size(
    model: nn.Module, model_info: dict[str, Any] | None = None, bits: int | None = None
) -> int:
    """Bytes ``export_model`` would write for ``model``, computed in memory."""
    tensors, manifest = export_contents(model, model_info, bits)
    return len(save(tensors, {"format": FORMAT})) + len(manifest_text(manifest).encode())


def manifest_text(manifest: dict[str, Any]) -> str:
    """``manifest.json``'s content: compact JSON, one line."""
    return json.dumps(manifest, separators=(",", ":")) + "\n"


def export_contents(
    model: nn.Module, model_info: dict[str, Any] | None = None, bits: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of ``model.safetensors`` and the manifest of ``model`` (``export_model``)."""
    model = single_bit_width(model, bits)
    layers = quantized_layers(model)
    was_training = model.training
    model.eval()
    try:
        grids, scales, codes, entries = _Grids(), [], [], []
        for name, layer in layers:
            entry, packed = _layer_codes(name, layer, grids, scales)
            entries.append(entry)
            if packed is not None:
                codes.append(packed)
    finally:
        model.train(was_training)
    weights = {weight_key(name) for name, layer in layers if layer.weight_quantizer is not None}
    floats = float_tensors(model, weights)
    tensors = {
        "codes": torch.cat(codes),
        "scales": torch.cat(scales).float(),
        "floats": torch.cat([t.detach().reshape(-1).cpu() for _, t in floats])
        if floats else torch.empty(0),
    }
    grid_entries, term_tables = grids.manifest_and_terms()
    tensors.update(term_tables)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_info,
        "grids": grid_entries,
        "layers": entries,
        "floats": {"count": len(floats), "signature": signature(floats)},
    }
    return tensors, manifest


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise LowbitError(f"{str(out_dir)!r} exists and is not a directory; choose another path")
    if out_dir.is_dir():
        extra = sorted(p.name for p in out_dir.iterdir() if p.name not in (MANIFEST, TENSORS))
        if extra:
            raise LowbitError(
                f"{str(out_dir)!r} holds other files ({', '.join(extra[:3])}); export into a "
                "new or empty directory"
            )


@contextmanager
def _atomic_directory(target: Path) -> Iterator[Path]:
    """A staging directory next to ``target``, renamed onto it when the block succeeds and
    removed when it fails; an existing ``target`` is swapped out, then deleted."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's 0700 is for staging only
        yield staging
        for path in staging.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        if target.exists():
            retired = staging.with_name(staging.name + ".old")  # unique: staging's name is
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
