"""The public API for training a quantized model in one's own loop: the optimizer's parameter
groups and the quantizers' hooks, the same ones ``lowbit train`` uses."""

from __future__ import annotations

from typing import Any

from torch import nn

from lowbit.errors import LowbitError, require_positive
from lowbit.nn.layers import QUANTIZED_TYPES
from lowbit.train.hooks import QuantizerHooks
from lowbit.train.optim import parameter_groups
from lowbit.train.run_config import QuantizerOptimConfig


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    *,
    quantizer_lr: float | None = None,
    input_quantizer_lr: float | None = None,
    quantizer_weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Parameter groups of a quantized ``model`` for any ``torch.optim`` optimizer: the
    network's weights at ``lr`` / ``weight_decay``; weight-quantizer parameters (clipping
    thresholds, step sizes, DropBits gate logits) at ``quantizer_lr`` (``None``: ``lr``);
    input-quantizer parameters at ``input_quantizer_lr`` (``None``: ``quantizer_lr``); both
    quantizer groups at ``quantizer_weight_decay``. Each trainable parameter is in one group.

    The papers' settings (``lowbit recipes``): APoT trains alpha with weight decay 1e-4 (on
    CIFAR at lr 0.02 for weights and 0.1 for inputs); UniQ, LSQ, RQ, SRQ and DropBits put no
    decay on their quantizer parameters, the default here, and RQ / SRQ train with Adam at
    lr 5e-4.
    """
    _require_quantized(model, "param_groups")
    require_positive(lr, "lr")
    require_positive(weight_decay, "weight_decay", zero_ok=True)
    for name, value in (("quantizer_lr", quantizer_lr), ("input_quantizer_lr", input_quantizer_lr)):
        if value is not None:
            require_positive(value, name, " (or None for the network's lr)")
    require_positive(quantizer_weight_decay, "quantizer_weight_decay", zero_ok=True)
    settings = QuantizerOptimConfig(
        weight_lr=quantizer_lr,
        input_lr=quantizer_lr if input_quantizer_lr is None else input_quantizer_lr,
        weight_decay=quantizer_weight_decay,
    )
    return parameter_groups(model, lr, weight_decay, settings)


def hooks(model: nn.Module) -> QuantizerHooks:
    """The quantizers' training hooks of a quantized ``model``: ``calibrate(batches, n)``
    before the first step, ``set_progress(fraction)`` before each step,
    ``regularization_loss()`` added to each loss, ``learned_bits()`` at the end. Every
    method may be driven this way: a hook a method's quantizers lack does nothing."""
    _require_quantized(model, "hooks")
    return QuantizerHooks(model)


def _require_quantized(model: nn.Module, what: str) -> None:
    # Called on a float model, these would miss the quantizer parameters and hooks that
    # quantize() adds later, and training would silently leave them alone.
    if not any(isinstance(m, QUANTIZED_TYPES) for m in model.modules()):
        raise LowbitError(
            f"{what}() needs a quantized model: call lowbit.quantize(model, method, bits) first"
        )
