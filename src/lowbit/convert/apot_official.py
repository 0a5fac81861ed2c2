"""The APoT authors' CIFAR ResNet checkpoints (repository yhhhli/APoT_Quantization, CIFAR10/).

Their files are ``torch.save`` dicts with ``epoch``, ``state_dict``, ``best_prec`` and
``optimizer``; the state dict comes from ``nn.DataParallel`` (keys start with ``module.``).
Their model is our ``resnet<depth>`` with 1x1 conv + BN shortcuts, quantized so:

* first conv and last fc: weights at 8 bits by ``maxscale`` (steps of ``max(W) / 127``),
  inputs float, in every model including their float one (``--bits 32``);
* every other conv, shortcuts included: APoT weights (Eq. 9 normalization with the mean and
  the unbiased std taken as constants, no epsilon: ``normalization="detached"``) and APoT
  activations, alpha in ``weight_quant.wgt_alpha`` / ``act_alpha``, both rounded as their code
  rounds (``divide_first``: divide by alpha, then project), and the quantized weight fed to
  the conv without lowbit's ``std`` rescale (``rescale=False``), as their BatchNorm statistics
  were collected on it;
* inputs normalized with mean (0.491, 0.482, 0.447) and std (0.247, 0.243, 0.262).

The imported checkpoint's ``config`` says all of this, so ``lowbit eval`` and ``--init``
rebuild the authors' forward pass through the ordinary path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import lowbit
from lowbit.errors import LowbitError
from lowbit.evaluate import rebuild_model
from lowbit.models import available_models
from lowbit.train.checkpoint import read_torch_file, save_checkpoint
from lowbit.train.config import DEFAULTS, merge

AUTHORS_MEAN = [0.491, 0.482, 0.447]
AUTHORS_STD = [0.247, 0.243, 0.262]
# Their weight quantizer builds level sets for 1..4 magnitude bits plus a sign. At 5 bits
# their activation levels (normalized in float32) differ from ours in the last bit, so only
# 2..4 bits reproduce their forward pass bitwise.
SUPPORTED_BITS = (2, 3, 4, 5)
FIRST_LAST = {"method": "maxscale", "bits": 8}
DATA_SETS = {10: "cifar10", 100: "cifar100"}
_RENAMES = (
    (".weight_quant.wgt_alpha", ".weight_quantizer.alpha"),
    (".act_alpha", ".input_quantizer.alpha"),
)


def parse_bits(text: str | int) -> int | None:
    """``--bits``: 2..5, or 32 / ``float`` for the authors' float model (``None``)."""
    if str(text).lower() in ("32", "float"):
        return None
    if str(text).isdigit() and int(text) in SUPPORTED_BITS:
        return int(text)
    raise LowbitError(
        f"--bits must be one of {', '.join(map(str, SUPPORTED_BITS))} or 32/float, got {text!r}"
    )


def read_authors_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict without ``module.`` prefixes, and ``epoch`` / ``best_prec``."""
    path = Path(path)
    raw = read_torch_file(path, "PyTorch checkpoint", "; pass the authors' .pth.tar file")
    if isinstance(raw, dict) and "config" in raw and "model" in raw:
        raise LowbitError(f"{str(path)!r} is already a lowbit checkpoint; use it directly")
    state = raw.get("state_dict") if isinstance(raw, dict) else None
    if isinstance(state, dict):
        state = {name.removeprefix("module."): tensor for name, tensor in state.items()}
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise LowbitError(
            f"{str(path)!r} is not an APoT authors' CIFAR ResNet checkpoint (expected a dict "
            "with a 'state_dict' holding conv1, layer1..3 and fc)"
        )
    meta = {key: float(raw[key]) if key == "best_prec" else int(raw[key])
            for key in ("epoch", "best_prec") if key in raw}
    return state, meta


def _depth(state: dict[str, torch.Tensor], source: str) -> int:
    """6n+2 from the number of blocks per stage (``layer1.<i>.``)."""
    blocks = [
        len({name.split(".")[1] for name in state if name.startswith(f"layer{stage}.")})
        for stage in (1, 2, 3)
    ]
    if not blocks[0] or len(set(blocks)) != 1 or "fc.weight" not in state:
        raise LowbitError(
            f"{source} is not an APoT authors' CIFAR ResNet checkpoint (blocks per stage "
            f"{blocks}, fc {'present' if 'fc.weight' in state else 'missing'})"
        )
    return 6 * blocks[0] + 2


def authors_config(
    depth: int, num_classes: int, bits: int | None, paper: str
) -> dict[str, Any]:
    """A lowbit config whose model is the authors' forward pass at ``bits`` (None: float)."""
    return merge(
        DEFAULTS,
        {
            "paper": paper,
            "model": {"name": f"resnet{depth}", "options": {"shortcut": "conv"}},
            "data": {"name": DATA_SETS[num_classes], "mean": AUTHORS_MEAN, "std": AUTHORS_STD},
            "method": "apot",
            "bits": bits,
            "overrides": {"conv1": FIRST_LAST, "fc": FIRST_LAST},
            "weight_options": {
                "normalization": "detached", "divide_first": True, "rescale": False,
            },
            "input_options": {"divide_first": True},
            "float_epochs": 0,
        },
    )


def convert_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' tensor names as lowbit's (quantizer thresholds move to the quantizers)."""
    converted = {}
    for name, tensor in state.items():
        for theirs, ours in _RENAMES:
            if name.endswith(theirs):
                name = name[: -len(theirs)] + ours
        converted[name] = tensor
    return converted


def import_apot_official(src: str | Path, bits: str | int, out: str | Path) -> dict[str, Any]:
    """Convert the authors' checkpoint ``src`` (trained at ``bits``) into a lowbit checkpoint at
    ``out``; returns what was written (model, bits, data set, tensor count)."""
    source = str(src)
    wanted = parse_bits(bits)
    state, meta = read_authors_checkpoint(src)
    quantized = any(name.endswith(theirs) for name in state for theirs, _ in _RENAMES)
    if wanted is None and quantized:
        raise LowbitError(
            f"{source} holds quantizer thresholds (a quantized model); pass the --bits it was "
            f"trained with ({', '.join(map(str, SUPPORTED_BITS))})"
        )
    if wanted is not None and not quantized:
        raise LowbitError(f"{source} is the authors' float model (no alphas); pass --bits 32")
    depth = _depth(state, source)
    num_classes = state["fc.weight"].shape[0]
    if f"resnet{depth}" not in available_models() or num_classes not in DATA_SETS:
        raise LowbitError(
            f"{source} is a ResNet-{depth} with {num_classes} classes; lowbit imports the "
            "authors' CIFAR-10/100 ResNet-20/32/44/56/110"
        )
    label = "float" if wanted is None else f"{wanted}-bit"
    paper = (
        f"APoT authors' ResNet-{depth} {label} checkpoint {Path(src).name}"
        + (f" (their best_prec {meta['best_prec']:.2f})" if "best_prec" in meta else "")
    )
    config = authors_config(depth, num_classes, wanted, paper)
    checkpoint = {"model": convert_state(state), "config": config, "stage": "quant"}
    model = rebuild_model(checkpoint, num_classes, 3, source)
    payload = {
        **checkpoint,
        "model": model.state_dict(),
        "source": {"format": "apot-official", "file": source, **meta},
        "lowbit_version": lowbit.__version__,
    }
    save_checkpoint(out, payload)
    return {
        "checkpoint": str(out),
        "model": config["model"]["name"],
        "bits": 32 if wanted is None else wanted,
        "data": config["data"]["name"],
        "tensors": len(payload["model"]),
    }
