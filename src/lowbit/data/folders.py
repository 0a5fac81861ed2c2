"""Image-folder trees on disk: ``train/<class>/*.jpg`` beside ``test/<class>/`` or ``val/<class>/``.

Shared by every builder that reads image files (``image_folder``, ``imagenet``, and
``cifar10``/``cifar100`` given JPEG/PNG trees): where the tree is, what its classes are,
which files belong to each split, and what happens to a file that cannot be decoded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from lowbit.errors import LowbitError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp"}
)
TEST_SPLITS = ("test", "val")


@dataclass(frozen=True)
class FolderTree:
    """An image-folder tree; label ``i`` is ``classes[i]``."""

    root: Path
    train: Path
    test: Path
    classes: tuple[str, ...]


def pillow() -> ModuleType:
    """``PIL.Image``, imported on first use so that ``import lowbit`` does not need Pillow."""
    try:
        from PIL import Image
    except ImportError as error:
        raise LowbitError("reading image files needs Pillow; run `pip install pillow`") from error
    return Image


@dataclass
class BadFiles:
    """Image files that could not be decoded: each is an error naming it, or, with ``skip``
    (``data.skip_bad_files``), left out and recorded so that the run can report them."""

    skip: bool = False
    skipped: dict[str, str] = field(default_factory=dict)  # path: why it could not be decoded

    def report(self, path: str, reason: str) -> None:
        """Raise the error for ``path``, or with ``skip`` record it as skipped."""
        if not self.skip:
            raise LowbitError(
                f"cannot decode image '{path}': {reason}; "
                "remove it or set data.skip_bad_files: true"
            )
        self.skipped[path] = reason


def decode_image(path: str, mode: str) -> tuple[Any, str]:
    """``(image, "")``: the image file at ``path`` decoded and converted to ``mode``; or
    ``(None, reason)`` when it cannot be, so that a worker process can hand the failure to the
    main process, which reports it (raised in a worker, it would arrive as a traceback)."""
    image_module = pillow()
    try:
        with image_module.open(path) as file:
            return file.convert(mode), ""
    except Exception as error:  # Pillow signals corrupt data with many types (OSError, ...)
        return None, describe(error)


def describe(error: Exception) -> str:
    """``error``'s message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def require_dir(data_dir: str | None, name: str, expected: str) -> Path:
    """``data_dir`` as an existing directory, else a LowbitError naming what ``name`` expects."""
    if not data_dir:
        raise LowbitError(
            f"data set {name!r} reads files from disk; set --data-dir to the folder holding "
            f"{expected}"
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise LowbitError(
            f"data directory {path} does not exist; point --data-dir at the folder holding "
            f"{expected}"
        )
    return path


def class_order(names: Sequence[str], standard: Sequence[str] | None = None) -> tuple[str, ...]:
    """The label order for class folders ``names``.

    ``standard`` (a data set's published label order) wins when the folders are exactly those
    classes; all-numeric names sort as numbers so that "10" follows "9"; otherwise names sort.
    """
    if standard is not None and set(names) == set(standard):
        return tuple(standard)
    if all(name.isdigit() for name in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def _class_folders(split: Path) -> list[str]:
    return [p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _tree_at(root: Path, standard: Sequence[str] | None) -> FolderTree | None:
    train = root / "train"
    test = next((root / s for s in TEST_SPLITS if (root / s).is_dir()), None)
    if not train.is_dir() or test is None:
        return None
    classes = _class_folders(train)
    if not classes:
        raise LowbitError(f"{train} has no class folders; put each class's images in <class>/")
    unknown = sorted(set(_class_folders(test)) - set(classes))
    if unknown or not _class_folders(test):
        raise LowbitError(
            f"{test} must hold one folder per class named as in {train} "
            f"(unexpected: {', '.join(unknown) or 'no class folders'})"
        )
    if len(classes) < 2:
        raise LowbitError(
            f"{train} has one class folder ({classes[0]}); a classifier needs at least 2 "
            "classes, one folder each"
        )
    return FolderTree(root, train, test, class_order(classes, standard))


def find_tree(data_dir: Path, standard: Sequence[str] | None = None) -> FolderTree | None:
    """The tree at ``data_dir``, or in its only subfolder holding one; ``None`` if there is none.

    Accepting the parent lets ``--data-dir`` name the folder an archive was extracted into.
    """
    tree = _tree_at(data_dir, standard)
    if tree is not None:
        return tree
    if (data_dir / "train").is_dir():
        raise LowbitError(
            f"{data_dir} has train/ but no {' or '.join(f'{s}/' for s in TEST_SPLITS)} beside "
            "it; put the evaluation images in test/<class>/"
        )
    children = sorted(p for p in data_dir.iterdir() if p.is_dir() and (p / "train").is_dir())
    found = [t for t in (_tree_at(child, standard) for child in children) if t is not None]
    if len(found) > 1:
        names = ", ".join(t.root.name for t in found)
        raise LowbitError(f"{data_dir} holds several image-folder trees ({names}); pass one")
    return found[0] if found else None


def list_samples(split: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    """``(file, label)`` for every image under ``split/<class>/``, classes interleaved.

    Files are taken round-robin across classes (first file of each class, then the second, ...)
    so that the first N samples, which ``limit`` keeps, cover every class. Paths are strings:
    ImageNet has over a million of them.
    """
    samples = []
    for label, name in enumerate(classes):
        files = sorted(
            os.path.join(folder, file)
            for folder, _, names in os.walk(split / name)
            for file in names
            if os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS
        )
        samples += [(rank, label, path) for rank, path in enumerate(files)]
    if not samples:
        raise LowbitError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {split}")
    samples.sort(key=lambda sample: sample[:2])
    return [(path, label) for _, label, path in samples]
