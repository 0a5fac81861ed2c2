"""MNIST (LeCun et al., 1998) and Fashion-MNIST (Xiao et al., 2017) from their IDX files.

``--data-dir`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, raw or ``.gz`` (or is the parent of
the ``MNIST/raw`` / ``FashionMNIST/raw`` folders other tools download into). Images are
28x28 grey; training batches are shuffled but not augmented, as in the LeNet-5 experiments.
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lowbit.data.bundle import tensor_bundle
from lowbit.data.folders import require_dir
from lowbit.data.registry import DataBundle, DataOptions, register_dataset
from lowbit.errors import LowbitError

FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
EXPECTED = "the IDX files " + ", ".join(FILES) + " (raw or .gz)"
IDX_UNSIGNED_BYTE = 0x08


@dataclass(frozen=True)
class IdxSpec:
    name: str
    subfolders: tuple[str, ...]
    mean: tuple[float]
    std: tuple[float]


# Mean and standard deviation of the 60,000 training images, in units of 1/255.
MNIST = IdxSpec("mnist", ("MNIST/raw", "mnist"), mean=(0.1307,), std=(0.3081,))
FASHION_MNIST = IdxSpec(
    "fashion_mnist", ("FashionMNIST/raw", "fashion_mnist", "fashion-mnist"),
    mean=(0.2860,), std=(0.3530,),
)


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array in an IDX file: magic ``0 0 8 ndim``, ``ndim`` big-endian sizes, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        raw = file.read()
    if len(raw) < 4 or raw[:3] != bytes([0, 0, IDX_UNSIGNED_BYTE]):
        raise LowbitError(f"{path} is not an IDX file of unsigned bytes; re-download it")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise LowbitError(f"{path} holds {data.size} bytes for shape {shape}; re-download it")
    return data.reshape(shape)


def find_idx_file(folders: list[Path], name: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_idx(data_dir: Path, spec: IdxSpec):
    """``(train_images, train_labels, test_images, test_labels)``; images uint8 [N, 1, 28, 28]."""
    folders = [data_dir, *(data_dir / sub for sub in spec.subfolders)]
    paths = [find_idx_file(folders, name) for name in FILES]
    if None in paths:
        raise LowbitError(f"expected {EXPECTED} in {data_dir}")
    arrays = [read_idx(path) for path in paths]
    for images, labels in (arrays[:2], arrays[2:]):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise LowbitError(f"{data_dir} has IDX files whose shapes do not match; re-download")
    train_x, train_y, test_x, test_y = (torch.from_numpy(array.copy()) for array in arrays)
    return train_x.unsqueeze(1), train_y.long(), test_x.unsqueeze(1), test_y.long()


def build_idx(options: DataOptions, spec: IdxSpec) -> DataBundle:
    data_dir = require_dir(options.data_dir, spec.name, EXPECTED)
    tensors = load_idx(data_dir, spec)
    return tensor_bundle(*tensors, options, num_classes=10, mean=spec.mean, std=spec.std)


@register_dataset("mnist")
def build_mnist(options: DataOptions) -> DataBundle:
    return build_idx(options, MNIST)


@register_dataset("fashion_mnist")
def build_fashion_mnist(options: DataOptions) -> DataBundle:
    return build_idx(options, FASHION_MNIST)
