"""PytorchCV's pre-activation ResNet-18/34 weights (``preresnet18``, ``preresnet34``), the float
models UniQ quantized (seed 003 §5.1: "We use the pre-trained models available at PytorchCV";
71.57 / 75.11 top-1), as lowbit ``preact_resnet18`` / ``preact_resnet34`` initializations.

PytorchCV names its modules ``features.init_block.{conv, bn}``,
``features.stageS.unitU.body.convC.{bn, conv}``, ``features.stageS.unitU.identity_conv``,
``features.post_activ.bn`` and ``output``; lowbit's pre-activation ResNets use torchvision's
names (``lowbit.models.preact_resnet``). The layout is the same, so renaming is all it takes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import LowbitError
from lowbit.models import build_model
from lowbit.train.checkpoint import read_torch_file, save_checkpoint

# (PytorchCV key pattern, lowbit key template); unit U becomes block U - 1.
RENAMES = (
    (r"features\.init_block\.conv\.(weight)", "conv1.{0}"),
    (r"features\.init_block\.bn\.(\w+)", "bn1.{0}"),
    (r"features\.stage(\d+)\.unit(\d+)\.body\.conv(\d)\.bn\.(\w+)", "layer{0}.{1}.bn{2}.{3}"),
    (r"features\.stage(\d+)\.unit(\d+)\.body\.conv(\d)\.conv\.(weight)",
     "layer{0}.{1}.conv{2}.{3}"),
    (r"features\.stage(\d+)\.unit(\d+)\.identity_conv\.(weight)", "layer{0}.{1}.downsample.0.{2}"),
    (r"features\.post_activ\.bn\.(\w+)", "bn.{0}"),
    (r"output\.(weight|bias)", "fc.{0}"),
)
# Blocks per stage -> lowbit model.
MODELS = {(2, 2, 2, 2): "preact_resnet18", (3, 4, 6, 3): "preact_resnet34"}


def rename_key(key: str) -> str:
    """lowbit's name for PytorchCV's ``key``; an unknown key is an error."""
    for pattern, template in RENAMES:
        match = re.fullmatch(pattern, key)
        if match:
            parts = list(match.groups())
            if template.startswith("layer"):
                parts[1] = str(int(parts[1]) - 1)
            return template.format(*parts)
    raise LowbitError(f"{key!r} is not a key of PytorchCV's preresnet18/34")


def convert_state(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """The lowbit model name and state dict for PytorchCV's ``state``, checked by loading it
    into that model with ``strict=True``."""
    renamed = {rename_key(key): value for key, value in state.items()}
    units: dict[int, set[str]] = {}
    for key in state:
        found = re.match(r"features\.stage(\d+)\.unit(\d+)\.", key)
        if found:
            units.setdefault(int(found.group(1)), set()).add(found.group(2))
    depths = tuple(len(units[stage]) for stage in sorted(units))
    if depths not in MODELS:
        raise LowbitError(
            f"blocks per stage {depths} are neither preresnet18's (2, 2, 2, 2) nor "
            "preresnet34's (3, 4, 6, 3)"
        )
    name = MODELS[depths]
    model = build_model(name, num_classes=renamed["fc.weight"].shape[0])
    try:
        model.load_state_dict(renamed, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise LowbitError(f"the weights do not fit {name}: {first}") from None
    return name, renamed


def import_pytorchcv_preresnet(src: str | Path, out: str | Path) -> dict[str, Any]:
    """Write PytorchCV's ``preresnet18/34`` file ``src`` (a state dict) as ``out``, a file
    ``--init`` reads (``{"model": state}``); returns the model name and the path."""
    state = read_torch_file(src, "PyTorch weights file", "; pass PytorchCV's .pth file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LowbitError(f"{str(src)!r} is not a state dict of tensors")
    name, renamed = convert_state(state)
    save_checkpoint(out, {"model": renamed})
    return {"model": name, "checkpoint": str(out)}
