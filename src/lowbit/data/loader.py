"""Batches from an in-memory uint8 image tensor, augmented with tensor ops on its device.

Small data sets (digits, MNIST, CIFAR) are decoded once into a ``uint8`` tensor; every epoch
is then a permutation, a gather and a few tensor ops per batch, with no per-image Python
(the airbench approach). The same object serves training (shuffled, augmented) and
evaluation (in order, no augmentation).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


class TensorLoader:
    """Iterate ``(images, labels)`` batches of normalized float images.

    ``images`` is ``uint8 [N, C, H, W]``, ``labels`` ``int64 [N]``. With ``augment=True`` a batch
    is randomly cropped after zero padding by ``pad`` pixels and flipped horizontally when
    ``flip`` is set. Shuffling and augmentation draw from a generator seeded by
    ``seed + epoch`` (``set_epoch``), so an epoch is reproducible on its own; ``rank`` /
    ``world_size`` give each distributed process its own slice of every epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        augment: bool = False,
        pad: int = 0,
        flip: bool = False,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor of shape [N, C, H, W]")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.pad, self.flip, self.drop_last = pad, flip, drop_last
        channels = images.shape[1]
        self.mean = torch.tensor(mean, device=self.device).view(1, channels, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, channels, 1, 1) * 255
        self.seed, self.epoch = seed, 0
        self.rank, self.world_size = rank, world_size

    @property
    def num_samples(self) -> int:
        """Samples this process sees in one epoch."""
        total = self.images.shape[0]
        return total // self.world_size if self.world_size > 1 else total

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(self.seed * 100_003 + self.epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = self._generator()
        total = self.images.shape[0]
        order = torch.randperm(total, generator=generator) if self.shuffle else torch.arange(total)
        if self.world_size > 1:
            order = order[: self.num_samples * self.world_size][self.rank :: self.world_size]
        order = order.to(self.device)
        for batch in range(len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            images = self.images[index]
            if self.augment:
                images = self._augment(images, generator)
            yield (images.float() - self.mean) / self.std, self.labels[index]

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, height, width = images.shape
        if self.pad:
            padded = torch.nn.functional.pad(images, [self.pad] * 4)
            dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator).to(self.device)
            dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator).to(self.device)
            rows = (dy[:, None] + torch.arange(height, device=self.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(width, device=self.device))[:, None, None, :]
            batch = torch.arange(n, device=self.device)[:, None, None, None]
            channels = torch.arange(images.shape[1], device=self.device)[None, :, None, None]
            images = padded[batch, channels, rows, cols]
        if self.flip:
            flipped = torch.rand(n, generator=generator).to(self.device) < 0.5
            images = torch.where(flipped[:, None, None, None], images.flip(3), images)
        return images
