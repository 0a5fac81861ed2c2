"""Any ``train/`` + ``test/`` (or ``val/``) image-folder tree, as the ``image_folder`` data set.

Small images (at most ``SMALL_IMAGE_SIZE`` pixels a side: CIFAR as JPEG, Tiny ImageNet) are
decoded once, by a pool of processes, into a cached uint8 tensor and then served by
``TensorLoader`` with pad-and-crop + flip augmentation. Larger images stream through
DataLoader workers with the ImageNet transforms (``lowbit.data.stream``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lowbit.data.bundle import tensor_bundle
from lowbit.data.cache import load_cached, save_cached, tree_key
from lowbit.data.folders import FolderTree, find_tree, list_samples, pillow, require_dir
from lowbit.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from lowbit.data.registry import DataBundle, DataOptions, register_dataset
from lowbit.data.stream import stream_bundle
from lowbit.errors import LowbitError

SMALL_IMAGE_SIZE = 64
EXPECTED = "train/<class>/ and test/<class>/ (or val/<class>/) image folders"


def probe(path: str | Path) -> tuple[str, int, int]:
    """``(mode, width, height)`` of the image at ``path``; mode is "L" for grey, else "RGB"."""
    with pillow().open(path) as image:
        mode = "L" if image.mode in ("1", "L") else "RGB"
        return mode, image.width, image.height


def _decode_chunk(paths: Sequence[str], mode: str) -> np.ndarray:
    image_module = pillow()
    arrays = []
    for path in paths:
        with image_module.open(path) as image:
            arrays.append(np.asarray(image.convert(mode)))
    _require_one_size({array.shape for array in arrays})
    return np.stack(arrays)


def _require_one_size(shapes: set[tuple[int, ...]]) -> None:
    if len(shapes) > 1:
        sizes = ", ".join(sorted({f"{shape[1]}x{shape[0]}" for shape in shapes}))  # width x height
        raise LowbitError(f"the images differ in size ({sizes}); resize them to one size first")


def decode_images(
    paths: Sequence[str], mode: str, workers: int, chunk: int = 512, desc: str = "decoding"
) -> torch.Tensor:
    """Decode ``paths`` into one uint8 tensor ``[N, C, H, W]``, ``workers`` processes at a time."""
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    with tqdm(total=len(paths), desc=desc, unit="img") as progress:
        if workers <= 1 or len(chunks) == 1:
            arrays = []
            for part in chunks:
                arrays.append(_decode_chunk(part, mode))
                progress.update(len(part))
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            try:
                futures = [pool.submit(_decode_chunk, part, mode) for part in chunks]
                arrays = []
                for future, part in zip(futures, chunks):
                    arrays.append(future.result())
                    progress.update(len(part))
            finally:
                # On an error or Ctrl-C, drop the chunks not yet started instead of decoding them.
                pool.shutdown(cancel_futures=True)
    _require_one_size({array.shape[1:] for array in arrays})
    images = torch.from_numpy(np.concatenate(arrays))
    if images.dim() == 3:
        images = images.unsqueeze(-1)
    return images.permute(0, 3, 1, 2).contiguous()


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 ``images`` in units of 1/255.

    Counting the 256 possible values is exact and needs no float copy of the images.
    """
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).double()
        total = counts.sum()
        mean = (counts * values).sum() / total
        var = (counts * (values - mean) ** 2).sum() / total
        means.append(mean.item() / 255)
        stds.append(var.sqrt().item() / 255)
    return means, stds


def decoded_tree(tree: FolderTree, workers: int) -> dict:
    """Train and test images, labels and training mean/std of a small-image tree, cached.

    The cache key covers every file's path, size and mtime, so a changed tree is re-decoded.
    """
    train = list_samples(tree.train, tree.classes)
    test = list_samples(tree.test, tree.classes)
    files = [path for path, _ in train + test]
    key = tree_key(tree.root, files)
    cached = load_cached(tree.root, key)
    if cached is not None:
        return cached
    mode, _, _ = probe(files[0])
    workers = max(1, min(workers, os.cpu_count() or 1))
    images = decode_images(files, mode, workers, desc=f"decoding {tree.root.name}")
    mean, std = channel_stats(images[: len(train)])
    payload = {
        "train_images": images[: len(train)].clone(),
        "train_labels": torch.tensor([label for _, label in train]),
        "test_images": images[len(train) :].clone(),
        "test_labels": torch.tensor([label for _, label in test]),
        "mean": mean,
        "std": std,
    }
    save_cached(tree.root, key, payload)
    return payload


def is_small(tree: FolderTree) -> bool:
    """Whether the tree's first training image is small enough to decode into memory."""
    first, _ = list_samples(tree.train, tree.classes[:1])[0]
    _, width, height = probe(first)
    return max(width, height) <= SMALL_IMAGE_SIZE


@register_dataset("image_folder")
def build_image_folder(options: DataOptions) -> DataBundle:
    """Any image-folder tree; mean/std come from the training images (ImageNet's when large)."""
    data_dir = require_dir(options.data_dir, "image_folder", EXPECTED)
    tree = find_tree(data_dir)
    if tree is None:
        raise LowbitError(f"expected {EXPECTED} in {data_dir}")
    if not is_small(tree):
        return stream_bundle(tree, options, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    data = decoded_tree(tree, options.workers)
    return tensor_bundle(
        data["train_images"], data["train_labels"], data["test_images"], data["test_labels"],
        options, num_classes=len(tree.classes), mean=data["mean"], std=data["std"],
        pad=data["train_images"].shape[-1] // 8, flip=True,
    )
