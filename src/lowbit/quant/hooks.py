"""The optional hooks a quantizer (or a module inside one) offers a training loop.

One ``Protocol`` per hook, each ``runtime_checkable``, rather than one protocol of four
methods: a quantizer implements any subset (UniQ, LSQ, RQ and SRQ grids only ``observe``;
DropBits masks ``set_progress``, ``regularization_loss`` and ``learned_bits``; APoT none),
so the question a collector asks of a module is "does it offer this hook", which
``isinstance(module, Hook)`` answers for one hook at a time. A quantizer gains a hook by
defining the method; nothing registers it.

``StateReporter`` and ``GridReporter`` are read, never called for their effect: the training
dynamics (``lowbit.train.dynamics``) sample them every few steps and ``lowbit plot`` draws
what they report. Neither may change the quantizer or draw random numbers.

``WeightSized`` is offered to the quantized layer rather than the loop: the layer calls it
once, when it is built, so that parameters whose size depends on the weight exist with their
final shape before any optimizer or DistributedDataParallel wrapper is made.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch


@runtime_checkable
class Observer(Protocol):
    def observe(self, x: torch.Tensor) -> None:
        """Calibration: update data-driven state (step sizes) from ``x``, a tensor the
        quantizer is about to see; called under ``no_grad`` before training."""


@runtime_checkable
class ProgressFollower(Protocol):
    def set_progress(self, fraction: float) -> None:
        """Before each training step: ``fraction`` of training done, in [0, 1] (annealing,
        phases such as DropBits' regularized first half)."""


@runtime_checkable
class Regularizer(Protocol):
    def regularization_loss(self) -> torch.Tensor:
        """A term added to the training loss after each forward (DropBits' L0 penalty)."""


@runtime_checkable
class BitLearner(Protocol):
    def learned_bits(self) -> str:
        """The bit-width learned for the layer the module belongs to (``"3"``, or ``"T"``
        for ternary)."""


class GridView(NamedTuple):
    """A tensor as a quantizer sees it: ``units`` (the tensor divided by the quantizer's
    scale, per channel where the scale is; a weight-normalizing quantizer's normalized
    tensor, APoT Eq. 9), the sorted 1-D ``levels`` it rounds ``units`` to the nearest of
    (its ends are where it clips), and ``scale``, which maps both back to the quantizer's own
    domain (broadcasts against ``units``)."""

    units: torch.Tensor
    levels: torch.Tensor
    scale: torch.Tensor


@runtime_checkable
class StateReporter(Protocol):
    def training_state(self) -> dict[str, torch.Tensor]:
        """Learned state worth following during training, detached: named scalars or short
        vectors (``alpha``, ``step``, ``sigma``, ``keep_probability``...); ``{}`` when it has
        none yet (a step not initialized from data)."""


@runtime_checkable
class GridReporter(Protocol):
    def grid_view(self, x: torch.Tensor) -> GridView | None:
        """``x``, a tensor this quantizer quantizes, on the quantizer's grid of nearest-level
        rounding (``GridView``); ``None`` when it has no such grid yet (a step not
        initialized from data)."""


@runtime_checkable
class WeightSized(Protocol):
    def allocate(self, weight_shape: torch.Size) -> None:
        """Construction: create the parameters that depend on the shape of the weight this
        quantizer will see (dim 0 = output channels; a per-channel step of shape ``(C,)``).
        Data-dependent initialization later only fills them in place."""
