"""MNIST and Fashion-MNIST from IDX files, raw or gzip-compressed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.data import build_data
from lowbit.data.mnist import read_idx
from lowbit.errors import LowbitError


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding: 0, 0, type 0x08 (unsigned byte), ndim, big-endian sizes, then data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_idx(folder: Path, train: int = 5, test: int = 3, gz: bool = False) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(test) + 4) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_decode_to_images_and_labels(tmp_path, gz):
    arrays = make_idx(tmp_path, gz=gz)
    bundle = build_data("mnist", data_dir=str(tmp_path))
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 28)
    assert bundle.train.images.shape == (5, 1, 28, 28)
    assert bundle.train.images.dtype == torch.uint8
    assert np.array_equal(bundle.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert bundle.train.labels.tolist() == [0, 1, 2, 3, 4]
    assert bundle.test.labels.tolist() == [4, 5, 6]
    assert bundle.train.labels.dtype == torch.int64


def test_mnist_and_fashion_mnist_normalize_with_their_own_statistics(tmp_path):
    make_idx(tmp_path / "MNIST" / "raw")
    make_idx(tmp_path / "FashionMNIST" / "raw", gz=True)
    for name, mean, std in (("mnist", 0.1307, 0.3081), ("fashion_mnist", 0.2860, 0.3530)):
        bundle = build_data(name, data_dir=str(tmp_path), eval_batch_size=3)
        images, _ = next(iter(bundle.test))
        expected = (bundle.test.images.double() / 255 - mean) / std
        torch.testing.assert_close(images.double(), expected, rtol=0, atol=1e-5)


def test_training_batches_are_shuffled_but_not_augmented(tmp_path):
    make_idx(tmp_path, train=8)
    loader = build_data("mnist", data_dir=str(tmp_path), batch_size=8, limit=6).train
    images, labels = next(iter(loader))
    assert not loader.augment and images.shape == (6, 1, 28, 28)
    assert sorted(labels.tolist()) == [0, 1, 2, 3, 4, 5]
    for image, label in zip(images, labels):
        raw = loader.images[label].double()  # labels 0..5 are also the image indices here
        torch.testing.assert_close(image.double(), (raw - loader.mean[0]) / loader.std[0])


def test_corrupt_files_and_missing_files_are_user_errors(tmp_path):
    make_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(LowbitError, match="expected the IDX files .*t10k-labels-idx1-ubyte"):
        build_data("mnist", data_dir=str(tmp_path))
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01x")
    with pytest.raises(LowbitError, match="not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros((2, 3), np.uint8))[:-1])
    with pytest.raises(LowbitError, match=r"holds 5 bytes for shape \(2, 3\)"):
        read_idx(tmp_path / "short")
    with pytest.raises(LowbitError, match="does not exist"):
        build_data("fashion_mnist", data_dir=str(tmp_path / "missing"))
