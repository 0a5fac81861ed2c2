"""The validation split (``val_fraction``) and short evaluations (``eval_limit``), for the
decoded-tensor data sets and the streamed image folders alike."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.data import build_data
from lowbit.data.registry import DataOptions
from lowbit.data.split import validation_split
from lowbit.errors import LowbitError

CLASSES = ["a", "b", "c", "d"]


@pytest.fixture
def small_tree(tmp_path, make_tree):
    """4 classes x 5 training images of 32x32: decoded into tensors; every image's pixels
    are distinct (``pixel_value``)."""
    return make_tree(tmp_path / "small", CLASSES, train_per_class=5, test_per_class=2)


@pytest.fixture
def large_tree(tmp_path, make_tree):
    """The same at 80x72: streamed."""
    return make_tree(tmp_path / "large", CLASSES, train_per_class=5, test_per_class=2,
                     size=(80, 72), suffix=".jpg")


def folder(root, **options):
    return build_data("image_folder", data_dir=str(root), workers=0, **options)


def pixels(images: torch.Tensor) -> list[int]:
    """One pixel per image: in ``small_tree`` it says which image it is."""
    return images[:, 0, 0, 0].tolist()


def paths(loader) -> list[str]:
    return [path for path, _ in loader.dataset.samples]


def test_the_split_partitions_the_positions_and_depends_on_the_seed_alone():
    train, val = validation_split(100, DataOptions(val_fraction=0.25, seed=7))
    assert len(val) == 25 and len(train) == 75
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert train.tolist() == sorted(train.tolist()) and val.tolist() == sorted(val.tolist())
    for other in (dict(rank=1, world_size=2), dict(rank=3, world_size=4), dict(limit=5)):
        again = validation_split(100, DataOptions(val_fraction=0.25, seed=7, **other))
        assert torch.equal(again[1], val)
    assert not torch.equal(validation_split(100, DataOptions(val_fraction=0.25, seed=8))[1], val)
    negative = validation_split(100, DataOptions(val_fraction=0.25, seed=-7))[1]
    assert len(negative) == 25 and not torch.equal(negative, val)


def test_decoded_validation_images_are_held_out_of_training_and_evaluated_plainly(small_tree):
    whole = folder(small_tree)
    bundle = folder(small_tree, val_fraction=0.25, seed=1)
    assert whole.val is None and whole.val_size == 0
    assert bundle.val_size == 5 and len(bundle.train.images) == 15
    train, val = pixels(bundle.train.images), pixels(bundle.val.images)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(pixels(whole.train.images))
    # Held out in the training set's order, and evaluated in that order without augmentation.
    order = pixels(whole.train.images)
    assert val == sorted(val, key=order.index)
    assert not bundle.val.shuffle and not bundle.val.augment and bundle.val.world_size == 1
    assert bundle.train.augment  # the training images still are
    batches = list(bundle.val)
    images = torch.cat([x for x, _ in batches])
    expected = (bundle.val.images.float() - bundle.val.mean) / bundle.val.std
    assert torch.equal(images, expected)
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels, bundle.val.labels)
    assert torch.equal(bundle.val.labels, torch.tensor([p // 16 for p in val]))


def test_every_process_holds_out_the_same_images(small_tree):
    def split(**options):
        bundle = folder(small_tree, val_fraction=0.4, seed=3, **options)
        return pixels(bundle.train.images), pixels(bundle.val.images)

    alone = split()
    assert split(rank=0, world_size=2) == split(rank=1, world_size=2) == alone
    assert split(rank=2, world_size=3) == alone
    assert pixels(folder(small_tree, val_fraction=0.4, seed=4).val.images) != alone[1]


def test_limit_applies_first_and_the_split_comes_out_of_the_limited_images(small_tree):
    limited = folder(small_tree, limit=8)
    bundle = folder(small_tree, limit=8, val_fraction=0.25)
    assert bundle.val_size == 2 and len(bundle.train.images) == 6
    kept = pixels(bundle.train.images) + pixels(bundle.val.images)
    assert sorted(kept) == sorted(pixels(limited.train.images))


def test_eval_limit_keeps_the_first_validation_and_test_images(small_tree):
    whole = folder(small_tree, val_fraction=0.5)
    bundle = folder(small_tree, val_fraction=0.5, eval_limit=3, batch_size=4)
    assert bundle.val_size == 10, "the held-out count is not cut, only its evaluation"
    assert torch.equal(bundle.val.images, whole.val.images[:3])
    assert torch.equal(bundle.test.images, whole.test.images[:3])
    assert torch.equal(bundle.test.labels, torch.tensor([0, 1, 2]))
    assert torch.equal(bundle.train.images, whole.train.images), "training is not cut"
    assert sum(len(y) for _, y in bundle.test) == 3
    assert len(folder(small_tree, eval_limit=100).test.images) == 8


def test_streamed_folders_split_the_same_way(large_tree):
    whole = folder(large_tree, batch_size=4)
    bundle = folder(large_tree, batch_size=4, val_fraction=0.25, seed=1)
    assert bundle.val_size == 5 and len(bundle.train.dataset) == 15
    train, val = paths(bundle.train), paths(bundle.val)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(paths(whole.train))
    assert val == sorted(val, key=paths(whole.train).index)
    assert not bundle.val.dataset.train and bundle.val.sampler is None
    images, labels = next(iter(bundle.val))
    assert images.shape == (5, 3, 224, 224)
    assert labels.tolist() == [label for _, label in bundle.val.dataset.samples]
    for rank in (0, 1):
        other = folder(large_tree, val_fraction=0.25, seed=1, rank=rank, world_size=2)
        assert paths(other.val) == val and paths(other.train) == train
    limited = folder(large_tree, val_fraction=0.25, seed=1, eval_limit=2)
    assert paths(limited.val) == val[:2]
    assert paths(limited.test) == paths(whole.test)[:2]


def test_imagenet_splits_too(tmp_path, make_tree):
    root = make_tree(tmp_path, ["n01", "n02"], train_per_class=4, test_per_class=1,
                     size=(70, 60), suffix=".JPEG", test_split="val")
    bundle = build_data("imagenet", data_dir=str(root), val_fraction=0.5, eval_limit=1,
                        workers=0)
    assert bundle.val_size == 4 and len(bundle.train.dataset) == 4
    assert len(bundle.val.dataset) == len(bundle.test.dataset) == 1


def test_the_tensor_data_sets_split(tmp_path):
    digits = build_data("digits")
    bundle = build_data("digits", val_fraction=0.1, seed=5)
    count = len(digits.train.labels)
    assert bundle.val_size == round(count * 0.1)
    assert len(bundle.train.labels) + bundle.val_size == count
    assert torch.equal(bundle.test.images, digits.test.images), "the test split is untouched"
    _, held = validation_split(count, DataOptions(val_fraction=0.1, seed=5))
    assert torch.equal(bundle.val.images, digits.train.images[held])
    assert torch.equal(bundle.val.labels, digits.train.labels[held])


@pytest.mark.parametrize("fraction", [1, 1.0, -0.1, math.nan, "0.2", True])
def test_a_fraction_outside_0_to_1_is_refused(fraction):
    with pytest.raises(LowbitError, match=r"^data.val_fraction must be at least 0 and below 1"):
        build_data("digits", val_fraction=fraction)


def test_a_fraction_holding_out_nothing_or_everything_is_refused(small_tree):
    with pytest.raises(LowbitError, match=r"data.val_fraction=0.01 holds out none of the 20"):
        folder(small_tree, val_fraction=0.01)
    with pytest.raises(LowbitError, match=r"data.val_fraction=0.6 holds out all 1 training"):
        folder(small_tree, val_fraction=0.6, limit=1)


@pytest.mark.parametrize("limit", [0, -1, 2.5, True, "3"])
def test_eval_limit_must_be_a_positive_whole_number(limit):
    with pytest.raises(LowbitError, match=r"^data.eval_limit must be a positive whole number"):
        build_data("digits", eval_limit=limit)
