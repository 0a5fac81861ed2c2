"""Faults in the data on disk: unreadable image files (an error naming the file, or skipped
and counted with ``skip_bad_files``), too few classes, a missing or empty split."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from lowbit.data import build_data
from lowbit.data.cifar import CIFAR10_CLASSES
from lowbit.data.folders import BadFiles, list_samples
from lowbit.data.image_folder import decode_images
from lowbit.errors import LowbitError


def folder(root, **options):
    return build_data("image_folder", data_dir=str(root), workers=0, **options)


def bad_file_error(path) -> str:
    """The whole message up to the reason, then the remedy, on one line."""
    where = re.escape(str(path))
    return rf"^cannot decode image '{where}': [^\n]+; remove it or set data.skip_bad_files: true$"


@pytest.fixture
def jpeg_tree(tmp_path, make_tree, truncated_jpeg):
    """Classes a, b with 3 training and 2 test JPEGs each; train/b/0001.jpg is truncated."""
    root = make_tree(tmp_path / "tree", ["a", "b"], suffix=".jpg")
    truncated_jpeg(root / "train" / "b" / "0001.jpg")
    return root


def test_a_truncated_jpeg_is_one_error_line_naming_it(jpeg_tree, cache_dir):
    bad = jpeg_tree / "train" / "b" / "0001.jpg"
    with pytest.raises(LowbitError, match=bad_file_error(bad)):
        folder(jpeg_tree)
    assert not list(cache_dir.glob("*.pt")), "nothing is cached from a failed decode"


def test_skipping_leaves_bad_files_out_and_counts_them(jpeg_tree, pixel_value):
    bundle = folder(jpeg_tree, skip_bad_files=True)
    bad = str(jpeg_tree / "train" / "b" / "0001.jpg")
    assert bundle.skipped_files == 1 and list(bundle.bad_files.skipped) == [bad]
    assert "truncated" in bundle.bad_files.skipped[bad]
    assert bundle.train.labels.tolist() == [0, 1, 0, 0, 1]
    expected = [pixel_value(0, 0, True), pixel_value(1, 0, True), pixel_value(0, 1, True),
                pixel_value(0, 2, True), pixel_value(1, 2, True)]
    # JPEG rounds solid colours by a step or two.
    assert np.allclose(bundle.train.images[:, 0, 0, 0].tolist(), expected, atol=2)
    assert len(bundle.test.labels) == 4


def test_a_bad_file_does_not_poison_the_cache(jpeg_tree, cache_dir, make_tree):
    bad = jpeg_tree / "train" / "b" / "0001.jpg"
    assert folder(jpeg_tree, skip_bad_files=True).skipped_files == 1
    assert len(list(cache_dir.glob("*.pt"))) == 1
    # Served from the cache, the entry still knows the bad file: an error unless skipping.
    with pytest.raises(LowbitError, match=bad_file_error(bad)):
        folder(jpeg_tree)
    assert folder(jpeg_tree, skip_bad_files=True).skipped_files == 1
    make_tree(jpeg_tree, ["a", "b"], suffix=".jpg")  # the file is written again, whole
    repaired = folder(jpeg_tree)
    assert repaired.skipped_files == 0 and len(repaired.train.labels) == 6


def test_a_file_pillow_cannot_even_open_is_named_too(tmp_path, make_tree):
    root = make_tree(tmp_path, ["a", "b"])
    first = root / "train" / "a" / "0000.png"  # the one probed for the image size
    first.write_bytes(b"not an image")
    with pytest.raises(LowbitError, match=bad_file_error(first)):
        folder(root)
    bundle = folder(root, skip_bad_files=True)
    assert bundle.skipped_files == 1 and len(bundle.train.labels) == 5


def test_pool_decoding_names_the_first_bad_file(tmp_path, make_tree, truncated_jpeg):
    root = make_tree(tmp_path, ["a", "b"], train_per_class=4, suffix=".jpg")
    for name in ("a/0002.jpg", "b/0003.jpg"):
        truncated_jpeg(root / "train" / name)
    files = [path for path, _ in list_samples(root / "train", ["a", "b"])]
    with pytest.raises(LowbitError, match=bad_file_error(root / "train" / "a" / "0002.jpg")):
        decode_images(files, "RGB", workers=2, bad_files=BadFiles(), chunk=2)
    skipped = BadFiles(skip=True)
    images, kept = decode_images(files, "RGB", workers=2, bad_files=skipped, chunk=2)
    assert kept == [0, 1, 2, 3, 5, 6] and len(images) == 6
    assert sorted(skipped.skipped) == [str(root / "train" / n) for n in ("a/0002.jpg",
                                                                          "b/0003.jpg")]


def test_a_split_with_no_readable_image_is_an_error_even_when_skipping(
    tmp_path, make_tree, truncated_jpeg
):
    root = make_tree(tmp_path, ["a", "b"], test_per_class=1, suffix=".jpg")
    for name in ("a", "b"):
        truncated_jpeg(root / "test" / name / "0000.jpg")
    with pytest.raises(LowbitError, match=r"none of the image files under .*test could be"):
        folder(root, skip_bad_files=True)


def test_cifar_jpeg_trees_name_the_bad_file(tmp_path, make_tree, truncated_jpeg):
    root = make_tree(tmp_path / "cifar10-jpg", CIFAR10_CLASSES, train_per_class=1,
                     test_per_class=1, suffix=".jpg")
    bad = truncated_jpeg(root / "test" / "ship" / "0000.jpg")
    with pytest.raises(LowbitError, match=bad_file_error(bad)):
        build_data("cifar10", data_dir=str(tmp_path), workers=1)
    bundle = build_data("cifar10", data_dir=str(tmp_path), workers=1, skip_bad_files=True)
    assert bundle.skipped_files == 1 and len(bundle.test.labels) == 9
    assert 8 not in bundle.test.labels.tolist()


@pytest.fixture
def photo_tree(tmp_path, make_tree, truncated_jpeg):
    """Streamed (80x72) classes a, b: 3 training images each, train/a/0001.jpg truncated;
    2 test images each, test/b/0000.jpg truncated."""
    root = make_tree(tmp_path / "photos", ["a", "b"], size=(80, 72), suffix=".jpg")
    truncated_jpeg(root / "train" / "a" / "0001.jpg", size=(80, 72))
    truncated_jpeg(root / "test" / "b" / "0000.jpg", size=(80, 72))
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_bad_file_is_one_error_line_from_the_loader(photo_tree, workers):
    bundle = build_data("image_folder", data_dir=str(photo_tree), batch_size=4, workers=workers)
    with pytest.raises(LowbitError, match=bad_file_error(photo_tree / "train" / "a" / "0001.jpg")):
        list(bundle.train)
    with pytest.raises(LowbitError, match=bad_file_error(photo_tree / "test" / "b" / "0000.jpg")):
        list(bundle.test)


def test_streamed_bad_files_are_left_out_of_their_batches_and_counted(photo_tree):
    bundle = build_data("imagenet", data_dir=str(photo_tree), batch_size=4, workers=0,
                        skip_bad_files=True)
    assert bundle.skipped_files == 0, "streamed files are decoded as batches reach them"
    batches = list(bundle.train)
    assert len(batches) == 2 and sum(len(labels) for _, labels in batches) == 5
    assert bundle.skipped_files == 1
    labels = torch.cat([y for _, y in bundle.test])
    assert labels.tolist() == [0, 0, 1]
    assert sorted(bundle.bad_files.skipped) == [
        str(photo_tree / "test" / "b" / "0000.jpg"), str(photo_tree / "train" / "a" / "0001.jpg")
    ]
    list(bundle.train)
    assert bundle.skipped_files == 2, "a file met again is not counted again"


def test_a_batch_with_no_readable_image(tmp_path, make_tree, truncated_jpeg):
    root = make_tree(tmp_path, ["a", "b"], train_per_class=1, size=(80, 72), suffix=".jpg")
    for name in ("a", "b"):
        truncated_jpeg(root / "train" / name / "0000.jpg", size=(80, 72))
    alone = build_data("imagenet", data_dir=str(root), workers=0, skip_bad_files=True)
    assert list(alone.train) == [] and alone.skipped_files == 2
    shared = build_data("imagenet", data_dir=str(root), workers=0, skip_bad_files=True,
                        rank=0, world_size=2)
    with pytest.raises(LowbitError, match="processes of a distributed run cannot leave out"):
        list(shared.train)


@pytest.mark.parametrize("name", ["image_folder", "imagenet", "cifar10"])
def test_one_class_folder_is_not_a_classification_data_set(tmp_path, make_tree, name):
    make_tree(tmp_path, ["cat"], test_split="val")
    with pytest.raises(LowbitError, match=r"has one class folder \(cat\); .*at least 2 classes"):
        build_data(name, data_dir=str(tmp_path))


def test_a_missing_or_empty_evaluation_split_is_named(tmp_path, make_tree):
    make_tree(tmp_path, ["a", "b"], test_per_class=0)
    with pytest.raises(LowbitError, match=r"has train/ but no test/ or val/ beside it"):
        folder(tmp_path)
    for name in ("a", "b"):
        (tmp_path / "test" / name).mkdir(parents=True)
    with pytest.raises(LowbitError, match=r"^no image files .* under .*test$"):
        folder(tmp_path)
