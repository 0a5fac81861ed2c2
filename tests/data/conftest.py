"""Tiny on-disk data sets in the real formats, and a private decode cache per test."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where this test's decoded data sets are cached (``data/`` of its own cache root)."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


def _pixel_value(label: int, index: int, train: bool) -> int:
    return 16 * label + index + (0 if train else 8)


@pytest.fixture
def pixel_value():
    """``pixel_value(label, index, train)``: every pixel of that image in ``make_tree``'s trees."""
    return _pixel_value


def save_image(path: Path, pixels: np.ndarray) -> None:
    image_module = pytest.importorskip("PIL.Image")  # tests that write images need Pillow
    path.parent.mkdir(parents=True, exist_ok=True)
    image_module.fromarray(pixels).save(path)


def _truncated_jpeg(path: Path, size: tuple[int, int] = (32, 32)) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    save_image(path, noise)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def truncated_jpeg():
    """``truncated_jpeg(path, size=(32, 32))``: a real JPEG of noise cut to half its bytes, as
    an interrupted copy leaves one: Pillow opens it but cannot decode it."""
    return _truncated_jpeg


@pytest.fixture
def make_tree():
    """``make(root, classes, ...)``: a ``train/`` + ``test/`` tree of solid-colour images."""

    def make(
        root: Path,
        classes: Sequence[str],
        train_per_class: int = 3,
        test_per_class: int = 2,
        size: tuple[int, int] = (32, 32),
        suffix: str = ".png",
        test_split: str = "test",
        grey: bool = False,
    ) -> Path:
        shape = (size[1], size[0]) if grey else (size[1], size[0], 3)
        for split, count in (("train", train_per_class), (test_split, test_per_class)):
            for label, name in enumerate(classes):
                for index in range(count):
                    value = _pixel_value(label, index, split == "train")
                    save_image(
                        root / split / name / f"{index:04d}{suffix}",
                        np.full(shape, value, dtype=np.uint8),
                    )
        return root

    return make
