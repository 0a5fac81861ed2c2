"""Train and test ``TensorLoader``s for a data set held as uint8 tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lowbit.data.loader import TensorLoader
from lowbit.data.registry import DataBundle, DataOptions


def tensor_bundle(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    options: DataOptions,
    *,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    pad: int = 0,
    flip: bool = False,
) -> DataBundle:
    """Shuffled, augmented training batches and in-order test batches.

    ``options.limit`` keeps the first ``limit`` training images; every process evaluates the
    whole test set.
    """
    if options.limit:
        train_images, train_labels = train_images[: options.limit], train_labels[: options.limit]
    mean, std = options.normalization(mean, std)
    common = dict(mean=mean, std=std, device=options.device, seed=options.seed)
    train = TensorLoader(
        train_images, train_labels, options.batch_size, shuffle=True,
        augment=bool(pad or flip), pad=pad, flip=flip,
        rank=options.rank, world_size=options.world_size, **common,
    )
    test = TensorLoader(test_images, test_labels, options.eval_batch_size, **common)
    return DataBundle(
        train, test, num_classes, in_channels=train_images.shape[1],
        image_size=train_images.shape[-1],
    )
