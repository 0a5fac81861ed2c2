"""The one collector of quantizer hooks (``lowbit.quant.hooks``), for the library's training
loop and for users' own loops (``lowbit.hooks``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.nn.calibrate import calibrate
from lowbit.quant.hooks import BitLearner, ProgressFollower, Regularizer, StateReporter


class QuantizerHooks:
    """The hooks of every module of ``model``, found once at construction (quantize first):
    ``calibrate`` before training, ``set_progress`` before each step,
    ``regularization_loss`` added to each step's loss, ``learned_bits`` at the end;
    ``training_state`` whenever the training dynamics are sampled."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        modules = list(model.named_modules())
        self.progress = [m for _, m in modules if isinstance(m, ProgressFollower)]
        self.regularizers = [m for _, m in modules if isinstance(m, Regularizer)]
        self.bit_learners = [(name, m) for name, m in modules if isinstance(m, BitLearner)]
        self.reporters = [(name, m) for name, m in modules if isinstance(m, StateReporter)]

    def calibrate(self, batches: Iterable, n: int) -> int:
        """Show the quantizers up to ``n`` batches (``(inputs, ...)`` or ``inputs``) so that
        they set their step sizes from data (``lowbit.nn.calibrate``); returns the number of
        batches used (0 for methods that do not calibrate)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise LowbitError(f"calibrate takes a number of batches >= 1, got {n!r}")
        return calibrate(self.model, batches, n)

    def set_progress(self, fraction: float) -> None:
        """``fraction`` of training done, before each step."""
        for module in self.progress:
            module.set_progress(fraction)

    def regularization_loss(self) -> torch.Tensor | float:
        """The quantizers' regularization for the last forward (0.0 when none regularizes)."""
        return sum((m.regularization_loss() for m in self.regularizers), 0.0)

    def learned_bits(self) -> dict[str, str]:
        """Bit-widths the quantizers learned (DropBits, SRQ §3.5), keyed by the name of the
        layer that owns each; empty when no quantizer learns its bits."""
        return {
            name.split(".weight_quantizer")[0]: module.learned_bits()
            for name, module in self.bit_learners
        }


    def training_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """What each quantizer (or module inside one) learns, keyed by its module name, as
        it is now (``lowbit.train.dynamics`` samples it); modules with nothing yet left out."""
        states = ((name, module.training_state()) for name, module in self.reporters)
        return {name: state for name, state in states if state}


def learned_bits(model: nn.Module) -> dict[str, str]:
    """``QuantizerHooks(model).learned_bits()``: what a finished run reports."""
    return QuantizerHooks(model).learned_bits()
