"""The ``image_folder`` data set: tree detection, class order, decoding, statistics, caching."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lowbit.data import build_data
from lowbit.data import image_folder as image_folder_module
from lowbit.data.folders import BadFiles, class_order, find_tree, list_samples
from lowbit.data.image_folder import channel_stats, decode_images
from lowbit.data.stream import StreamLoader
from lowbit.errors import LowbitError


def build(root, **options):
    return build_data("image_folder", data_dir=str(root), workers=1, **options)


def test_labels_follow_sorted_class_names_and_pixels(tmp_path, make_tree, pixel_value):
    drawn = ["zebra", "apple", "mango"]  # make_tree draws pixels by position in this list
    make_tree(tmp_path / "tree", drawn)
    bundle = build(tmp_path / "tree")
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (3, 3, 32)
    images, labels = bundle.train.images, bundle.train.labels
    assert images.shape == (9, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 2] * 3
    for position, (image, label) in enumerate(zip(images, labels)):
        name = ["apple", "mango", "zebra"][label]
        expected = pixel_value(drawn.index(name), position // 3, train=True)
        assert torch.equal(image, torch.full_like(image, expected))
    assert bundle.test.images.shape == (6, 3, 32, 32)
    assert bundle.test.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_training_order_interleaves_classes_so_limit_keeps_every_class(tmp_path, make_tree):
    make_tree(tmp_path, ["a", "b", "c"], train_per_class=4)
    bundle = build(tmp_path, limit=3)
    assert bundle.train.labels.tolist() == [0, 1, 2]


def test_numeric_class_names_sort_as_numbers():
    assert class_order(["10", "2", "1"]) == ("1", "2", "10")
    assert class_order(["b10", "b2"]) == ("b10", "b2")
    assert class_order(["b", "a"], standard=["b", "a"]) == ("b", "a")
    assert class_order(["b", "c"], standard=["b", "a"]) == ("b", "c")


def test_mean_and_std_come_from_the_training_images(tmp_path, make_tree):
    make_tree(tmp_path, ["a", "b"], train_per_class=1)
    bundle = build(tmp_path)
    train = bundle.train.images.double() / 255
    expected_mean = train.mean(dim=(0, 2, 3))
    expected_std = train.std(dim=(0, 2, 3), unbiased=False)
    # TensorLoader keeps mean/std scaled to 0..255 pixel units.
    torch.testing.assert_close(bundle.train.mean.view(-1).double() / 255, expected_mean)
    torch.testing.assert_close(bundle.train.std.view(-1).double() / 255, expected_std)


def test_channel_stats_is_exact():
    images = torch.randint(0, 256, (5, 3, 7, 9), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    mean, std = channel_stats(images)
    as_float = images.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64),
                               as_float.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64),
                               as_float.std(dim=(0, 2, 3), unbiased=False))


def test_grey_images_give_one_channel_and_jpeg_and_val_split_work(tmp_path, make_tree):
    make_tree(tmp_path, ["a", "b"], suffix=".jpg", test_split="val", grey=True, size=(28, 28))
    bundle = build(tmp_path)
    assert bundle.in_channels == 1 and bundle.image_size == 28
    assert bundle.train.images.shape == (6, 1, 28, 28)
    assert bundle.test.images.shape == (4, 1, 28, 28)


def test_pool_decoding_matches_in_process_decoding(tmp_path, make_tree):
    make_tree(tmp_path, ["a", "b"], train_per_class=3)
    files = [path for path, _ in list_samples(tmp_path / "train", ["a", "b"])]
    alone, kept = decode_images(files, "RGB", workers=1, bad_files=BadFiles())
    pooled, kept_pooled = decode_images(files, "RGB", workers=2, bad_files=BadFiles(), chunk=2)
    assert torch.equal(alone, pooled)
    assert kept == kept_pooled == list(range(6))
    make_tree(tmp_path, ["c"], train_per_class=1, size=(30, 32))
    with pytest.raises(LowbitError, match=r"differ in size \(30x32, 32x32\)"):
        decode_images(
            [*files, str(tmp_path / "train" / "c" / "0000.png")], "RGB", 2, BadFiles(), chunk=2
        )


def test_second_build_reads_the_cache_and_a_changed_tree_is_decoded_again(
    tmp_path, make_tree, cache_dir, monkeypatch
):
    root = make_tree(tmp_path / "tree", ["a", "b"])
    calls = []
    decode = image_folder_module.decode_images
    monkeypatch.setattr(image_folder_module, "decode_images",
                        lambda *args, **kw: calls.append(1) or decode(*args, **kw))
    first = build(root)
    second = build(root)
    assert len(calls) == 1
    assert torch.equal(first.train.images, second.train.images)
    assert len(list(cache_dir.glob("*.pt"))) == 1

    changed = root / "train" / "a" / "0000.png"
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    build(root)
    assert len(calls) == 2
    (root / "train" / "b" / "0000.png").rename(root / "train" / "a" / "0099.png")
    third = build(root)
    assert len(calls) == 3
    assert third.train.labels.bincount().tolist() == [4, 2]
    assert len(list(cache_dir.glob("*.pt"))) == 1, "stale entries are removed"


def test_parent_folder_is_accepted_but_two_trees_are_ambiguous(tmp_path, make_tree):
    make_tree(tmp_path / "one", ["a", "b"])
    assert build(tmp_path).num_classes == 2
    make_tree(tmp_path / "two", ["a", "b"])
    with pytest.raises(LowbitError, match="several image-folder trees"):
        find_tree(tmp_path)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, r"expected train/<class>/ and test/<class>/ .* in "),
        (lambda root: (root / "train").mkdir() or (root / "test").mkdir(), "no class folders"),
    ],
)
def test_unrecognized_layouts_say_what_was_expected(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(LowbitError, match=message):
        build(tmp_path)


def test_test_classes_must_be_training_classes(tmp_path, make_tree):
    make_tree(tmp_path, ["a", "b"])
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(LowbitError, match="unexpected: c"):
        build(tmp_path)


def test_missing_directory_and_missing_option_are_user_errors(tmp_path):
    with pytest.raises(LowbitError, match="does not exist"):
        build(tmp_path / "nowhere")
    with pytest.raises(LowbitError, match="set --data-dir"):
        build_data("image_folder")


def test_images_of_different_sizes_are_refused(tmp_path, make_tree):
    make_tree(tmp_path, ["a"], train_per_class=1, size=(32, 32))
    make_tree(tmp_path, ["b"], train_per_class=1, size=(30, 32))
    with pytest.raises(LowbitError, match="differ in size"):
        build(tmp_path)


def test_large_images_stream_through_the_imagenet_transforms(tmp_path, make_tree):
    make_tree(tmp_path, ["a", "b"], size=(80, 72), suffix=".jpg")
    bundle = build(tmp_path, batch_size=4)
    assert isinstance(bundle.train, StreamLoader) and bundle.image_size == 224
    images, labels = next(iter(bundle.train))
    assert images.shape == (4, 3, 224, 224) and images.dtype == torch.float32
    assert np.isin(labels.numpy(), [0, 1]).all()
