"""Large images decoded per batch by DataLoader workers (ImageNet and other photo trees).

Workers decode with Pillow, crop and resize, and hand back uint8 tensors; normalization runs
on the training device, so the host only ever moves bytes. Training crops follow the
Inception-style random-resized crop (random area 8-100%, aspect 3/4-4/3, resized to the
output size) with a horizontal flip; evaluation resizes the shorter side to 256/224 of the
output and takes the centre. Each sample's randomness is drawn from ``(seed, epoch, index)``,
so an epoch is reproducible whatever the number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lowbit.data.folders import FolderTree, list_samples, pillow
from lowbit.data.registry import DataBundle, DataOptions

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
    """``(uint8 [3, size, size] image, label)`` for each ``(path, label)`` sample."""

    def __init__(
        self, samples: Sequence[tuple[str, int]], train: bool, size: int, seed: int = 0
    ) -> None:
        self.samples, self.train, self.size, self.seed = list(samples), train, size, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with pillow().open(path) as file:
            image = file.convert("RGB")
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image = train_transform(image, self.size, rng)
        else:
            image = eval_transform(image, self.size)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1), label


class StreamLoader:
    """A ``BatchLoader`` over ``ImageFiles``: normalized float batches on ``device``.

    A shuffled loader draws through a ``DistributedSampler`` (one replica when not
    distributed), whose ``set_epoch`` reshuffles; an unshuffled one reads in order.
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
    ) -> None:
        self.dataset, self.device = dataset, torch.device(device)
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
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            yield (images.float() - self.mean) / self.std, labels.to(self.device, non_blocking=True)


def stream_bundle(
    tree: FolderTree,
    options: DataOptions,
    mean: Sequence[float],
    std: Sequence[float],
    size: int = 224,
) -> DataBundle:
    """Streaming train/test loaders for ``tree``; every process evaluates the whole test split."""
    train_samples = list_samples(tree.train, tree.classes)
    if options.limit:
        train_samples = train_samples[: options.limit]
    test_samples = list_samples(tree.test, tree.classes)
    mean, std = options.normalization(mean, std)
    common = dict(mean=mean, std=std, device=options.device, seed=options.seed,
                  workers=options.workers)
    train = StreamLoader(
        ImageFiles(train_samples, train=True, size=size, seed=options.seed),
        options.batch_size, shuffle=True, rank=options.rank, world_size=options.world_size,
        **common,
    )
    test = StreamLoader(
        ImageFiles(test_samples, train=False, size=size), options.eval_batch_size, **common
    )
    return DataBundle(train, test, len(tree.classes), in_channels=3, image_size=size)
