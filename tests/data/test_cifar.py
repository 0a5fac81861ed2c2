"""CIFAR-10/100 from the python-pickle folders and from JPEG/PNG trees."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.data import build_data
from lowbit.data.cifar import CIFAR10, CIFAR10_CLASSES, CIFAR100
from lowbit.errors import LowbitError

REPO = Path(__file__).resolve().parents[2]
SHARED_TARBALL = REPO / ".." / "shared" / "data" / "cifar10-jpg.tar.gz"


def batch(count: int, first_label: int, num_classes: int, label_key: str, bytes_keys: bool):
    """A batch dict like the official files: ``data`` uint8 [N, 3072] (CHW rows), labels list.

    Pixel (n, c, y, x) is (n * 7 + c * 50 + y + x) mod 256, so a wrong reshape shows.
    """
    n, c, y, x = np.meshgrid(
        np.arange(count), np.arange(3), np.arange(32), np.arange(32), indexing="ij"
    )
    data = ((n * 7 + c * 50 + y + x) % 256).astype(np.uint8).reshape(count, 3072)
    labels = [(first_label + i) % num_classes for i in range(count)]
    content = {"data": data, label_key: labels, "batch_label": "training batch"}
    if label_key == "fine_labels":
        content["coarse_labels"] = [0] * count
    return {k.encode(): v for k, v in content.items()} if bytes_keys else content


def write_pickle(path: Path, content: dict, numpy1: bool = False) -> None:
    raw = pickle.dumps(content, protocol=2)
    if numpy1:  # the official files name numpy 1's module for the array constructor
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)


def make_cifar10(root: Path, bytes_keys: bool = False) -> Path:
    folder = root / CIFAR10.folder
    for i, name in enumerate(CIFAR10.train_files):
        write_pickle(folder / name, batch(2, 2 * i, 10, "labels", bytes_keys), numpy1=True)
    write_pickle(folder / "test_batch", batch(3, 7, 10, "labels", bytes_keys), numpy1=True)
    return folder


def test_cifar10_pickles_decode_to_chw_images_and_labels(tmp_path):
    make_cifar10(tmp_path)
    bundle = build_data("cifar10", data_dir=str(tmp_path))
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 32)
    images, labels = bundle.train.images, bundle.train.labels
    assert images.shape == (10, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == list(range(10))
    assert images[1, 2, 3, 4].item() == (1 * 7 + 2 * 50 + 3 + 4) % 256
    assert bundle.test.labels.tolist() == [7, 8, 9]


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_the_pickle_folder_itself_is_accepted_with_either_key_type(tmp_path, bytes_keys):
    folder = make_cifar10(tmp_path, bytes_keys=bytes_keys)
    assert build_data("cifar10", data_dir=str(folder)).train.images.shape[0] == 10


def test_cifar10_normalizes_with_the_training_set_statistics(tmp_path):
    make_cifar10(tmp_path)
    bundle = build_data("cifar10", data_dir=str(tmp_path), eval_batch_size=3)
    images, _ = next(iter(bundle.test))
    raw = bundle.test.images.double() / 255
    mean = torch.tensor((0.4914, 0.4822, 0.4465), dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616), dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(images.double(), (raw - mean) / std, rtol=0, atol=1e-5)


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / CIFAR100.folder
    write_pickle(folder / "train", batch(6, 95, 100, "fine_labels", bytes_keys=False))
    write_pickle(folder / "test", batch(2, 0, 100, "fine_labels", bytes_keys=False))
    bundle = build_data("cifar100", data_dir=str(tmp_path))
    assert bundle.num_classes == 100
    assert bundle.train.labels.tolist() == [95, 96, 97, 98, 99, 0]
    assert bundle.train.mean.view(-1)[0].item() == pytest.approx(0.5071 * 255)


def test_training_augmentation_is_pad4_crop_flip_and_deterministic_per_epoch(tmp_path):
    make_cifar10(tmp_path)

    def epoch_batches(epoch):
        loader = build_data("cifar10", data_dir=str(tmp_path), batch_size=4, seed=3).train
        assert (loader.pad, loader.flip, loader.augment) == (4, True, True)
        loader.set_epoch(epoch)
        return list(loader)

    first, again, other = epoch_batches(1), epoch_batches(1), epoch_batches(2)
    assert [x.shape for x, _ in first] == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    assert all(x.dtype == torch.float32 for x, _ in first)
    for (x, y), (x2, y2) in zip(first, again):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not all(torch.equal(x, x2) for (x, _), (x2, _) in zip(first, other))


def test_limit_keeps_the_first_training_images(tmp_path):
    make_cifar10(tmp_path)
    bundle = build_data("cifar10", data_dir=str(tmp_path), limit=4)
    assert bundle.train.labels.tolist() == [0, 1, 2, 3]
    assert bundle.test.images.shape[0] == 3


def test_pickles_naming_other_globals_are_refused(tmp_path):
    folder = make_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Path("x")}, protocol=2))
    with pytest.raises(LowbitError, match="refusing to unpickle pathlib"):
        build_data("cifar10", data_dir=str(tmp_path))


def test_an_image_tree_with_the_cifar10_classes_is_used_without_pickles(
    tmp_path, make_tree, pixel_value
):
    make_tree(tmp_path / "cifar10-jpg", CIFAR10_CLASSES, train_per_class=1, test_per_class=1)
    bundle = build_data("cifar10", data_dir=str(tmp_path), workers=1)
    assert bundle.train.labels.tolist() == list(range(10))
    for label, image in enumerate(bundle.train.images):
        assert torch.equal(image, torch.full_like(image, pixel_value(label, 0, train=True)))
    assert bundle.train.mean.view(-1)[0].item() == pytest.approx(0.4914 * 255)


def test_an_image_tree_with_the_wrong_class_count_or_size_is_refused(tmp_path, make_tree):
    make_tree(tmp_path / "a", ["cat", "dog"], train_per_class=1, test_per_class=1)
    with pytest.raises(LowbitError, match="2 class folders but cifar10 has 10"):
        build_data("cifar10", data_dir=str(tmp_path / "a"))
    make_tree(tmp_path / "b", CIFAR10_CLASSES, train_per_class=1, test_per_class=1, size=(28, 28))
    expected = "airplane holds 28x28 RGB images but cifar10 images are 32x32 RGB"
    with pytest.raises(LowbitError, match=expected):
        build_data("cifar10", data_dir=str(tmp_path / "b"))


def test_a_folder_without_cifar_data_says_what_was_expected(tmp_path):
    (tmp_path / CIFAR10.folder).mkdir()
    (tmp_path / CIFAR10.folder / "data_batch_1").write_bytes(b"")
    expected = (
        "expected cifar-10-batches-py/ with data_batch_1..5 and test_batch, "
        f"or train/ and test/ image folders, in {tmp_path}"
    )
    with pytest.raises(LowbitError) as error:
        build_data("cifar10", data_dir=str(tmp_path))
    assert str(error.value) == expected
    with pytest.raises(LowbitError, match="cifar-100-python/ with train and test, or train/"):
        build_data("cifar100", data_dir=str(tmp_path))
    with pytest.raises(LowbitError, match="does not exist"):
        build_data("cifar10", data_dir=str(tmp_path / "missing"))


@pytest.mark.skipif(not SHARED_TARBALL.is_file(), reason="needs ../shared/data/cifar10-jpg.tar.gz")
def test_shared_cifar10_jpeg_tarball_is_detected_after_extraction(tmp_path):
    """Extract two images per class and split from the real archive and build cifar10 on them."""
    taken: dict[str, int] = {}
    with tarfile.open(SHARED_TARBALL) as archive:
        for member in archive:
            parts = Path(member.name).parts  # cifar10-jpg/<split>/<class>/<file>.jpg
            folder = "/".join(parts[:3])
            if member.isfile() and len(parts) == 4 and taken.get(folder, 0) < 2:
                taken[folder] = taken.get(folder, 0) + 1
                target = tmp_path.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
                if len(taken) == 20 and all(count == 2 for count in taken.values()):
                    break
    assert {Path(folder).parts[1] for folder in taken} == {"train", "test"}
    bundle = build_data("cifar10", data_dir=str(tmp_path), workers=1)
    assert bundle.train.images.shape == (20, 3, 32, 32)
    assert bundle.train.labels.tolist() == list(range(10)) * 2
    assert bundle.test.labels.bincount().tolist() == [2] * 10
