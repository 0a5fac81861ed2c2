"""ImageNet-style trees streamed through DataLoader workers, and the Pillow transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowbit.data import build_data
from lowbit.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from lowbit.data.stream import eval_transform, random_crop_box, train_transform
from lowbit.errors import LowbitError

Image = pytest.importorskip("PIL.Image")
WNIDS = ["n01440764", "n01443537", "n01484850"]


@pytest.fixture
def imagenet(tmp_path, make_tree):
    return make_tree(tmp_path / "imagenet", WNIDS, train_per_class=3, test_per_class=2,
                     size=(90, 70), suffix=".JPEG", test_split="val")


def test_random_crop_boxes_keep_area_and_aspect_in_range():
    rng = np.random.default_rng(0)
    for _ in range(500):
        left, top, width, height = random_crop_box(400, 300, rng)
        assert 0 <= left <= 400 - width and 0 <= top <= 300 - height
        # Rounding the sides to pixels moves area and aspect slightly past the draws' bounds.
        assert 0.08 * 0.98 <= width * height / (400 * 300) <= 1.0
        assert 3 / 4 * 0.97 <= width / height <= 4 / 3 * 1.03


def test_random_crop_falls_back_to_a_central_crop_of_allowed_aspect():
    """A 1000x10 strip admits no crop of area >= 8%: the centre 13x10 (aspect 4/3) is taken."""
    assert random_crop_box(1000, 10, np.random.default_rng(0)) == (493, 0, 13, 10)
    assert random_crop_box(10, 1000, np.random.default_rng(0)) == (0, 493, 10, 13)


def test_eval_transform_resizes_the_shorter_side_to_256_and_crops_the_centre_224():
    """800x400 -> 512x256 -> columns 144..368: the black/white edge at 400 lands on column 112."""
    pixels = np.zeros((400, 800, 3), np.uint8)
    pixels[:, 400:] = 255
    out = np.asarray(eval_transform(Image.fromarray(pixels), 224))
    assert out.shape == (224, 224, 3)
    assert out[:, :110].max() == 0 and out[:, 114:].min() == 255
    assert np.array_equal(out[:, :112], 255 - out[:, 112:][:, ::-1])


def test_train_transform_gives_size_by_size_and_is_a_function_of_the_generator():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), np.uint8))
    first = np.asarray(train_transform(image, 32, np.random.default_rng(5)))
    again = np.asarray(train_transform(image, 32, np.random.default_rng(5)))
    assert first.shape == (32, 32, 3) and np.array_equal(first, again)


def test_imagenet_batches_are_normalized_224_crops_with_sorted_wnid_labels(imagenet):
    bundle = build_data("imagenet", data_dir=str(imagenet), batch_size=4, workers=0)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (3, 3, 224)
    assert len(bundle.train) == math.ceil(9 / 4) and len(bundle.test) == 1
    images, labels = next(iter(bundle.test))
    assert images.shape == (6, 3, 224, 224) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    # Solid-colour images stay solid through resize and crop (up to JPEG's rounding).
    value = 16 * 1 + 0 + 8  # make_tree's pixel for class 1, image 0 of the test split
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = (value / 255 - mean) / std
    assert torch.allclose(images[1].mean(dim=(1, 2)), expected, atol=2 / 255 / 0.224)
    train_images, _ = next(iter(bundle.train))
    assert train_images.shape == (4, 3, 224, 224)


def test_an_epoch_is_reproducible_and_independent_of_the_worker_count(imagenet):
    def epoch(workers, number):
        loader = build_data("imagenet", data_dir=str(imagenet), batch_size=5, seed=2,
                            workers=workers).train
        loader.set_epoch(number)
        return list(loader)

    serial, parallel, later = epoch(0, 1), epoch(2, 1), epoch(0, 2)
    for (x, y), (x2, y2) in zip(serial, parallel):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(serial[0][0], later[0][0])


def test_distributed_ranks_see_disjoint_equal_shares(imagenet):
    shares = []
    for rank in (0, 1):
        loader = build_data("imagenet", data_dir=str(imagenet), batch_size=8, workers=0,
                            rank=rank, world_size=2).train
        loader.set_epoch(3)
        shares.append(list(loader.sampler))
    assert len(shares[0]) == len(shares[1]) == 4
    assert not set(shares[0]) & set(shares[1])


def test_limit_keeps_the_first_training_images_across_classes(imagenet):
    loader = build_data("imagenet", data_dir=str(imagenet), limit=3, workers=0).train
    assert [label for _, label in loader.dataset.samples] == [0, 1, 2]


def test_an_unsorted_val_folder_says_to_sort_it_into_class_folders(tmp_path, make_tree):
    make_tree(tmp_path, WNIDS[:1], test_per_class=0)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    with pytest.raises(LowbitError, match="one folder per class"):
        build_data("imagenet", data_dir=str(tmp_path))
    with pytest.raises(LowbitError, match=r"expected train/<wnid>/ and val/<wnid>/"):
        build_data("imagenet", data_dir=str(tmp_path / "train"))
