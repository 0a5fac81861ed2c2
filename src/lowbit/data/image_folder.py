"""Any ``train/`` + ``test/`` (or ``val/``) image-folder tree, as the ``image_folder`` data set.

Small images (at most ``SMALL_IMAGE_SIZE`` pixels a side: CIFAR as JPEG, Tiny ImageNet) are
decoded once, by a pool of processes, into a cached uint8 tensor and then served by
``TensorLoader`` with pad-and-crop + flip augmentation. Larger images stream through
DataLoader workers with the ImageNet transforms (``lowbit.data.stream``).
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from lowbit.data.bundle import tensor_bundle
from lowbit.data.cache import load_cached, save_cached, tree_key
from lowbit.data.folders import (
    BadFiles,
    FolderTree,
    decode_image,
    describe,
    find_tree,
    list_samples,
    pillow,
    require_dir,
)
from lowbit.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from lowbit.data.registry import DataBundle, DataOptions, register_dataset
from lowbit.data.stream import stream_bundle
from lowbit.errors import LowbitError

logger = logging.getLogger("lowbit")

SMALL_IMAGE_SIZE = 64
EXPECTED = "train/<class>/ and test/<class>/ (or val/<class>/) image folders"


def probe(paths: Sequence[str], bad_files: BadFiles) -> tuple[str, int, int]:
    """``(mode, width, height)`` of the first of ``paths`` that Pillow can open (the others
    before it go to ``bad_files``); mode is "L" for grey, else "RGB"."""
    image_module = pillow()
    for path in paths:
        try:
            with image_module.open(path) as image:
                mode = "L" if image.mode in ("1", "L") else "RGB"
                return mode, image.width, image.height
        except Exception as error:  # as in decode_image: Pillow has many error types
            bad_files.report(path, describe(error))
    raise LowbitError(f"none of the {len(paths)} image files could be opened")


def _decode_chunk(
    paths: Sequence[str], mode: str
) -> tuple[np.ndarray | None, list[tuple[int, str]]]:
    """The images of ``paths`` stacked (``None`` if none decodes) and ``(position, reason)``
    for each file that does not."""
    arrays, failures = [], []
    for position, path in enumerate(paths):
        image, reason = decode_image(path, mode)
        if image is None:
            failures.append((position, reason))
        else:
            arrays.append(np.asarray(image))
    _require_one_size({array.shape for array in arrays})
    return (np.stack(arrays) if arrays else None), failures


def _require_one_size(shapes: set[tuple[int, ...]]) -> None:
    if len(shapes) > 1:
        sizes = ", ".join(sorted({f"{shape[1]}x{shape[0]}" for shape in shapes}))  # width x height
        raise LowbitError(f"the images differ in size ({sizes}); resize them to one size first")


def decode_images(
    paths: Sequence[str],
    mode: str,
    workers: int,
    bad_files: BadFiles,
    chunk: int = 512,
    desc: str = "decoding",
) -> tuple[torch.Tensor, list[int]]:
    """Decode ``paths`` into one uint8 tensor ``[N, C, H, W]``, ``workers`` processes at a time,
    and the positions in ``paths`` of its N images; files that cannot be decoded go to
    ``bad_files`` (an error unless it skips them)."""
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    # As the training bars: on a terminal only (None), off with --quiet, cleared when done,
    # so that an error is the one line left on stderr.
    disable = None if logger.isEnabledFor(logging.INFO) else True
    bar = tqdm(total=len(paths), desc=desc, unit="img", leave=False, disable=disable)
    with bar as progress:
        if workers <= 1 or len(chunks) == 1:
            results = (_decode_chunk(part, mode) for part in chunks)
            return _gather(results, paths, chunk, bad_files, progress)
        pool = ProcessPoolExecutor(max_workers=workers)
        try:
            futures = [pool.submit(_decode_chunk, part, mode) for part in chunks]
            return _gather(
                (future.result() for future in futures), paths, chunk, bad_files, progress
            )
        finally:
            # On an error or Ctrl-C, drop the chunks not yet started instead of decoding them.
            pool.shutdown(cancel_futures=True)


def _gather(
    results: Iterable[tuple[np.ndarray | None, list[tuple[int, str]]]],
    paths: Sequence[str],
    chunk: int,
    bad_files: BadFiles,
    progress: tqdm,
) -> tuple[torch.Tensor, list[int]]:
    """``decode_images``' result from its chunks' results, taken in order so that without
    skipping the error names the first bad file."""
    arrays, kept = [], []
    for start, (array, failures) in zip(range(0, len(paths), chunk), results):
        for position, reason in failures:
            bad_files.report(paths[start + position], reason)
        failed = {start + position for position, _ in failures}
        kept += [i for i in range(start, min(start + chunk, len(paths))) if i not in failed]
        if array is not None:
            arrays.append(array)
        progress.update(min(chunk, len(paths) - start))
    if not arrays:
        raise LowbitError(f"none of the {len(paths)} image files could be decoded")
    _require_one_size({array.shape[1:] for array in arrays})
    images = torch.from_numpy(np.concatenate(arrays))
    if images.dim() == 3:
        images = images.unsqueeze(-1)
    return images.permute(0, 3, 1, 2).contiguous(), kept


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


def decoded_tree(tree: FolderTree, workers: int, bad_files: BadFiles) -> dict:
    """Train and test images, labels and training mean/std of a small-image tree, cached.

    The cache key covers every file's path, size and mtime, so a changed tree is re-decoded.
    An entry made while skipping bad files lists them (``"bad"``), so that a later build
    reports them, or fails on them, exactly as a fresh decode would.
    """
    train = list_samples(tree.train, tree.classes)
    test = list_samples(tree.test, tree.classes)
    key = tree_key(tree.root, [path for path, _ in train + test])
    payload = load_cached(tree.root, key)
    if payload is None:
        payload = _decode_tree(tree, train, test, workers, BadFiles(bad_files.skip))
        save_cached(tree.root, key, payload)
    for path, reason in payload["bad"]:
        bad_files.report(path, reason)
    return payload


def _decode_tree(
    tree: FolderTree,
    train: list[tuple[str, int]],
    test: list[tuple[str, int]],
    workers: int,
    bad_files: BadFiles,
) -> dict:
    samples = train + test
    files = [path for path, _ in samples]
    mode, _, _ = probe(files, bad_files)
    workers = max(1, min(workers, os.cpu_count() or 1))
    images, kept = decode_images(files, mode, workers, bad_files, desc=f"decoding {tree.root.name}")
    n_train = bisect.bisect_left(kept, len(train))  # kept is in order: training images first
    for split, count in ((tree.train, n_train), (tree.test, len(kept) - n_train)):
        if count == 0:
            raise LowbitError(f"none of the image files under {split} could be decoded")
    labels = torch.tensor([samples[i][1] for i in kept])
    mean, std = channel_stats(images[:n_train])
    return {
        "train_images": images[:n_train].clone(),
        "train_labels": labels[:n_train].clone(),
        "test_images": images[n_train:].clone(),
        "test_labels": labels[n_train:].clone(),
        "mean": mean,
        "std": std,
        "bad": [[path, reason] for path, reason in bad_files.skipped.items()],
    }


def is_small(tree: FolderTree, bad_files: BadFiles) -> bool:
    """Whether the tree's first training image is small enough to decode into memory."""
    first_class = [path for path, _ in list_samples(tree.train, tree.classes[:1])]
    _, width, height = probe(first_class, bad_files)
    return max(width, height) <= SMALL_IMAGE_SIZE


@register_dataset("image_folder")
def build_image_folder(options: DataOptions) -> DataBundle:
    """Any image-folder tree; mean/std come from the training images (ImageNet's when large)."""
    data_dir = require_dir(options.data_dir, "image_folder", EXPECTED)
    tree = find_tree(data_dir)
    if tree is None:
        raise LowbitError(f"expected {EXPECTED} in {data_dir}")
    bad_files = BadFiles(options.skip_bad_files)
    if not is_small(tree, bad_files):
        return stream_bundle(tree, options, IMAGENET_MEAN, IMAGENET_STD, bad_files=bad_files)
    data = decoded_tree(tree, options.workers, bad_files)
    return tensor_bundle(
        data["train_images"], data["train_labels"], data["test_images"], data["test_labels"],
        options, num_classes=len(tree.classes), mean=data["mean"], std=data["std"],
        pad=data["train_images"].shape[-1] // 8, flip=True, bad_files=bad_files,
    )
