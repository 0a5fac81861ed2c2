"""Data sets by name: each builder returns a ``DataBundle`` of train, validation and test
loaders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from lowbit.data.folders import BadFiles
from lowbit.errors import LowbitError, is_number


class BatchLoader(Protocol):
    """What the training loop needs from a loader: batches, a length, per-epoch reseeding."""

    def __iter__(self): ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass
class DataBundle:
    """The loaders of a data set. ``val`` evaluates the ``val_size`` training images held out
    by ``DataOptions.val_fraction`` (``None`` without); ``bad_files`` holds the image files
    left out as unreadable (``DataOptions.skip_bad_files``)."""

    train: BatchLoader
    test: BatchLoader
    num_classes: int
    in_channels: int
    image_size: int
    val: BatchLoader | None = None
    val_size: int = 0
    bad_files: BadFiles = field(default_factory=BadFiles)

    @property
    def skipped_files(self) -> int:
        """Image files left out as unreadable. Streamed data sets decode as they go: there it
        counts those this process has met so far (it grows during the first epoch)."""
        return len(self.bad_files.skipped)


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
    # Fraction of the (limited) training images held out for validation, chosen by `seed`.
    val_fraction: float = 0.0
    eval_limit: int | None = None  # evaluate only the first `eval_limit` val and test images
    skip_bad_files: bool = False  # leave out (and count) image files that cannot be decoded

    def __post_init__(self) -> None:
        fraction, limit = self.val_fraction, self.eval_limit
        if not (is_number(fraction) and 0 <= fraction < 1):
            raise LowbitError(
                f"data.val_fraction must be at least 0 and below 1, got {fraction!r}"
            )
        whole = isinstance(limit, int) and not isinstance(limit, bool)
        if limit is not None and not (whole and limit > 0):
            raise LowbitError(f"data.eval_limit must be a positive whole number, got {limit!r}")

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
