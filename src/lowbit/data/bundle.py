"""Train, validation and test ``TensorLoader``s for a data set held as uint8 tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lowbit.data.folders import BadFiles
from lowbit.data.loader import TensorLoader
from lowbit.data.registry import DataBundle, DataOptions
from lowbit.data.split import validation_split


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
    bad_files: BadFiles | None = None,
) -> DataBundle:
    """Shuffled, augmented training batches and in-order, unaugmented evaluation batches.

    ``options.limit`` keeps the first ``limit`` training images, then ``options.val_fraction``
    of those are held out for validation (``validation_split``); ``options.eval_limit`` keeps
    the first images of the validation and test sets. Every process evaluates them whole.
    ``bad_files`` are the image files the tensors were decoded without.
    """
    if options.limit:
        train_images, train_labels = train_images[: options.limit], train_labels[: options.limit]
    mean, std = options.normalization(mean, std)
    common = dict(mean=mean, std=std, device=options.device, seed=options.seed)

    def evaluation(images: torch.Tensor, labels: torch.Tensor) -> TensorLoader:
        limit = options.eval_limit
        return TensorLoader(images[:limit], labels[:limit], options.eval_batch_size, **common)

    val, val_size = None, 0
    if options.val_fraction:
        kept, held = validation_split(len(train_labels), options)
        val, val_size = evaluation(train_images[held], train_labels[held]), len(held)
        train_images, train_labels = train_images[kept], train_labels[kept]
    train = TensorLoader(
        train_images, train_labels, options.batch_size, shuffle=True,
        augment=bool(pad or flip), pad=pad, flip=flip,
        rank=options.rank, world_size=options.world_size, **common,
    )
    return DataBundle(
        train, evaluation(test_images, test_labels), num_classes,
        in_channels=train_images.shape[1], image_size=train_images.shape[-1],
        val=val, val_size=val_size, bad_files=BadFiles() if bad_files is None else bad_files,
    )
