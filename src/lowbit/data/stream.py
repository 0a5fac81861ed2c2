"""Large images decoded per batch by DataLoader workers (ImageNet and other photo trees).

Workers decode with Pillow, crop and resize, and hand back uint8 tensors; normalization runs
on the training device, so the host only ever moves bytes. Training crops follow the
Inception-style random-resized crop (random area 8-100%, aspect 3/4-4/3, resized to the
output size) with a horizontal flip; evaluation resizes the shorter side to 256/224 of the
output and takes the centre. Each sample's randomness is drawn from ``(seed, epoch, index)``,
so an epoch is reproducible whatever the number of workers.

A file that cannot be decoded is found only when a batch reaches it: the worker hands the
failure on with the batch, and the loader raises the one-line error, or, when bad files are
skipped, leaves the sample out of its batch and records it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lowbit.data.folders import BadFiles, FolderTree, decode_image, list_samples, pillow
from lowbit.data.registry import DataBundle, DataOptions
from lowbit.data.split import validation_split
from lowbit.errors import LowbitError

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
EVAL_RESIZE_RATIO = 256 / 224


def random_crop_box(
    width: int, height: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """``(left, top, crop_width, crop_height)`` of a random crop with area and aspect in range.

    Ten draws are tried; if none fits, the whole image is cropped centrally to the nearest
    allowed aspect ratio.
    """
    area = width * height
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(log_low, log_high))
        crop_w = round(math.sqrt(target * aspect))
        crop_h = round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(rng.integers(0, width - crop_w + 1))
            top = int(rng.integers(0, height - crop_h + 1))
            return left, top, crop_w, crop_h
    aspect = width / height
    crop_w, crop_h = width, height
    if aspect < CROP_RATIO[0]:
        crop_h = round(width / CROP_RATIO[0])
    elif aspect > CROP_RATIO[1]:
        crop_w = round(height * CROP_RATIO[1])
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def train_transform(image, size: int, rng: np.random.Generator):
    """Random-resized crop to ``size`` x ``size``, then a horizontal flip half of the time."""
    left, top, crop_w, crop_h = random_crop_box(image.width, image.height, rng)
    image_module = pillow()
    box = (left, top, left + crop_w, top + crop_h)
    image = image.resize((size, size), image_module.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        image = image.transpose(image_module.Transpose.FLIP_LEFT_RIGHT)
    return image


def eval_transform(image, size: int):
    """Resize the shorter side to ``size * 256 / 224``, then crop ``size`` x ``size`` centrally."""
    scale = round(size * EVAL_RESIZE_RATIO) / min(image.width, image.height)
    width, height = round(image.width * scale), round(image.height * scale)
    image = image.resize((width, height), pillow().Resampling.BILINEAR)
    left, top = round((width - size) / 2), round((height - size) / 2)
    return image.crop((left, top, left + size, top + size))


class ImageFiles(Dataset):
    """``(uint8 [3, size, size] image, label, index, reason)`` for each ``(path, label)``
    sample: ``reason`` is "" or why the file could not be decoded (the image is then black),
    for the loader to report in the main process."""

    def __init__(
        self, samples: Sequence[tuple[str, int]], train: bool, size: int, seed: int = 0
    ) -> None:
        self.samples, self.train, self.size, self.seed = list(samples), train, size, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, str]:
        path, label = self.samples[index]
        image, reason = decode_image(path, "RGB")
        if image is None:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), label, index, reason
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image = train_transform(image, self.size, rng)
        else:
            image = eval_transform(image, self.size)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1), label, index, ""


class StreamLoader:
    """A ``BatchLoader`` over ``ImageFiles``: normalized float batches on ``device``.

    A shuffled loader draws through a ``DistributedSampler`` (one replica when not
    distributed), whose ``set_epoch`` reshuffles; an unshuffled one reads in order. Files that
    cannot be decoded go to ``bad_files``: an error, or left out of their batches.
    """

    def __init__(
        self,
        dataset: ImageFiles,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 4,
        bad_files: BadFiles | None = None,
    ) -> None:
        self.dataset, self.device = dataset, torch.device(device)
        self.bad_files = BadFiles() if bad_files is None else bad_files
        # Processes of a distributed run must take the same number of steps.
        self.lockstep = shuffle and world_size > 1
        self.sampler = (
            DistributedSampler(
                dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                drop_last=True,
            )
            if shuffle
            else None
        )
        # Workers are started anew each epoch (not persistent) so they see the new epoch.
        self.loader = DataLoader(
            dataset, batch_size, sampler=self.sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda",
        )
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, indices, reasons in self.loader:
            if any(reasons):
                readable = self._readable(indices, reasons)
                if not readable.any():
                    continue
                images, labels = images[readable], labels[readable]
            images = images.to(self.device, non_blocking=True)
            yield (images.float() - self.mean) / self.std, labels.to(self.device, non_blocking=True)

    def _readable(self, indices: torch.Tensor, reasons: Sequence[str]) -> torch.Tensor:
        """Which samples of a batch decoded; the others are reported to ``bad_files``."""
        paths = [self.dataset.samples[index][0] for index in indices.tolist()]
        for path, reason in zip(paths, reasons):
            if reason:
                self.bad_files.report(path, reason)
        readable = torch.tensor([not reason for reason in reasons])
        if self.lockstep and not readable.any():
            raise LowbitError(
                f"no image of a training batch could be decoded (the first: '{paths[0]}'); "
                "processes of a distributed run cannot leave out a whole batch: remove the "
                "bad files"
            )
        return readable


def stream_bundle(
    tree: FolderTree,
    options: DataOptions,
    mean: Sequence[float],
    std: Sequence[float],
    size: int = 224,
    bad_files: BadFiles | None = None,
) -> DataBundle:
    """Streaming train, validation and test loaders for ``tree``, as ``tensor_bundle`` makes
    them: ``limit``, then the validation split, then ``eval_limit``; every process evaluates
    the whole validation and test sets. ``bad_files`` may hold files already found bad."""
    bad_files = BadFiles(options.skip_bad_files) if bad_files is None else bad_files
    train_samples = list_samples(tree.train, tree.classes)
    if options.limit:
        train_samples = train_samples[: options.limit]
    mean, std = options.normalization(mean, std)
    common = dict(mean=mean, std=std, device=options.device, seed=options.seed,
                  workers=options.workers, bad_files=bad_files)

    def evaluation(samples: list[tuple[str, int]]) -> StreamLoader:
        dataset = ImageFiles(samples[: options.eval_limit], train=False, size=size)
        return StreamLoader(dataset, options.eval_batch_size, **common)

    val, val_size = None, 0
    if options.val_fraction:
        kept, held = validation_split(len(train_samples), options)
        val, val_size = evaluation([train_samples[i] for i in held.tolist()]), len(held)
        train_samples = [train_samples[i] for i in kept.tolist()]
    train = StreamLoader(
        ImageFiles(train_samples, train=True, size=size, seed=options.seed),
        options.batch_size, shuffle=True, rank=options.rank, world_size=options.world_size,
        **common,
    )
    test = evaluation(list_samples(tree.test, tree.classes))
    return DataBundle(
        train, test, len(tree.classes), in_channels=3, image_size=size, val=val,
        val_size=val_size, bad_files=bad_files,
    )
