"""Data sets by name: each builder returns a ``DataBundle`` of train and test loaders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from lowbit.errors import LowbitError


class BatchLoader(Protocol):
    """What the training loop needs from a loader: batches, a length, per-epoch reseeding."""

    def __iter__(self): ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass
class DataBundle:
    train: BatchLoader
    test: BatchLoader
    num_classes: int
    in_channels: int
    image_size: int


@dataclass(frozen=True)
class DataOptions:
    """Everything a builder may use; builders ignore what does not apply to them."""

    data_dir: str | None = None
    batch_size: int = 128
    eval_batch_size: int = 512
    device: torch.device | str = "cpu"
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    limit: int | None = None  # keep only the first `limit` training images (smoke runs)
    workers: int = 4
    mean: Sequence[float] | None = None  # per-channel input normalization instead of the
    std: Sequence[float] | None = None  # data set's own (e.g. the values a checkpoint used)

    def normalization(
        self, mean: Sequence[float], std: Sequence[float]
    ) -> tuple[Sequence[float], Sequence[float]]:
        """The data set's ``mean`` / ``std`` unless these options override them."""
        chosen = (self.mean or mean, self.std or std)
        for name, values in zip(("mean", "std"), chosen):
            if not isinstance(values, Sequence) or len(values) != len(mean):
                raise LowbitError(
                    f"data.{name} needs {len(mean)} values (one per channel), got {values!r}"
                )
        return chosen


DataBuilder = Callable[[DataOptions], DataBundle]
_DATASETS: dict[str, DataBuilder] = {}


def register_dataset(name: str) -> Callable[[DataBuilder], DataBuilder]:
    """Decorator: make ``builder(options) -> DataBundle`` available as ``name``."""

    def add(builder: DataBuilder) -> DataBuilder:
        if name in _DATASETS:
            raise ValueError(f"data set {name!r} is already registered")
        _DATASETS[name] = builder
        return builder

    return add


def available_datasets() -> list[str]:
    return sorted(_DATASETS)


def build_data(name: str, **options: Any) -> DataBundle:
    """Loaders for data set ``name`` (see ``DataOptions`` for the options)."""
    if name not in _DATASETS:
        raise LowbitError(
            f"unknown data set {name!r}; available: {', '.join(available_datasets())}"
        )
    return _DATASETS[name](DataOptions(**options))
