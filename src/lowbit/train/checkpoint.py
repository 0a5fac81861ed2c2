"""Checkpoints: plain dicts of tensors and built-in values, written atomically.

Every checkpoint loads with ``torch.load(weights_only=True)``. A write goes to a temporary
file in the same directory and is renamed over the old one, so a kill during the write leaves
the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.files import atomic_write


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (tensors, dicts, lists, numbers, strings) to ``path``."""
    with atomic_write(path) as temporary:
        torch.save(payload, temporary)


def read_torch_file(
    path: str | Path, what: str, hint: str = "", map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)`` (no code runs on load), failing with a one-line
    ``LowbitError`` when it is missing or unreadable; the error calls it a ``what`` (e.g.
    ``"lowbit checkpoint"``) and ends with ``hint`` (e.g. ``"; pass the .pth.tar file"``)."""
    path = Path(path)
    if not path.is_file():
        raise LowbitError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types, with multi-line messages
        raise LowbitError(
            f"{str(path)!r} is not a readable {what} ({type(error).__name__}){hint}"
        ) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a lowbit checkpoint (``weights_only=True``: no code runs on load)."""
    checkpoint = read_torch_file(path, "lowbit checkpoint", map_location=map_location)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise LowbitError(f"{str(path)!r} is not a lowbit checkpoint (no 'model' tensors)")
    return checkpoint


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load the tensors of ``state`` whose names and shapes match ``model``'s (progressive
    initialization: float -> 5 -> 4 -> 3 -> 2 bits). Returns ``(loaded, skipped)`` names."""
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(matching)) + sorted(set(state) - set(own))
    if not matching:
        raise LowbitError(
            "the checkpoint shares no tensor with this model: it was made for another model"
        )
    model.load_state_dict(matching, strict=False)
    return sorted(matching), skipped
