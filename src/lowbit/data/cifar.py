"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009): the python-pickle folders or JPEG/PNG trees.

``--data-dir`` may name ``cifar-10-batches-py/`` (``cifar-100-python/``) or its parent; if no
pickle folder is there, a ``train/`` + ``test/`` image-folder tree with the right number of
32x32 colour classes is decoded once into the cache (``lowbit.data.image_folder``).
Training batches get the standard pad-4 random crop and horizontal flip.
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lowbit.data.bundle import tensor_bundle
from lowbit.data.folders import BadFiles, find_tree, list_samples, require_dir
from lowbit.data.image_folder import decoded_tree, probe
from lowbit.data.registry import DataBundle, DataOptions, register_dataset
from lowbit.errors import LowbitError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

# The published label order. Both CIFAR-10's and CIFAR-100's fine labels happen to be
# alphabetical, so class folders named after them sort into this order too.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    described: str  # the batch files, for error messages
    classes: tuple[str, ...] | None = None

    @property
    def expected(self) -> str:
        return f"{self.folder}/ with {self.described}, or train/ and test/ image folders"


# Per-channel mean and standard deviation of the 50,000 training images.
CIFAR10 = CifarSpec(
    "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch", "labels", 10, described="data_batch_1..5 and test_batch",
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), classes=CIFAR10_CLASSES,
)
CIFAR100 = CifarSpec(
    "cifar100", "cifar-100-python", ("train",), "test", "fine_labels", 100,
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), described="train and test",
)

# The only globals a CIFAR pickle refers to; anything else is refused instead of executed.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise LowbitError(f"refusing to unpickle {module}.{name}: not a CIFAR batch file")
        return _PICKLE_GLOBALS[(module, name)]


def read_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``uint8 [N, 3, 32, 32]`` and labels ``int64 [N]`` of one pickled batch file."""
    with open(path, "rb") as file:
        # latin1 decodes the Python 2 strings inside the official files without loss.
        batch = _ArrayUnpickler(file, encoding="latin1").load()
    batch = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(images.copy()), torch.tensor(batch[label_key], dtype=torch.int64)


def find_pickle_folder(data_dir: Path, spec: CifarSpec) -> Path | None:
    """``data_dir`` or ``data_dir/<spec.folder>``, whichever holds every batch file."""
    for folder in (data_dir, data_dir / spec.folder):
        if all((folder / name).is_file() for name in (*spec.train_files, spec.test_file)):
            return folder
    return None


def load_pickles(folder: Path, spec: CifarSpec):
    """``(train_images, train_labels, test_images, test_labels)`` from the pickle folder."""
    train = [read_batch(folder / name, spec.label_key) for name in spec.train_files]
    test_images, test_labels = read_batch(folder / spec.test_file, spec.label_key)
    return (
        torch.cat([images for images, _ in train]), torch.cat([labels for _, labels in train]),
        test_images, test_labels,
    )


def load_tree(data_dir: Path, spec: CifarSpec, workers: int, bad_files: BadFiles):
    """The same four tensors from a JPEG/PNG tree of 32x32 colour images (decoded, cached);
    files that cannot be decoded go to ``bad_files``."""
    tree = find_tree(data_dir, spec.classes)
    if tree is None:
        raise LowbitError(f"expected {spec.expected}, in {data_dir}")
    if len(tree.classes) != spec.num_classes:
        raise LowbitError(
            f"{tree.train} has {len(tree.classes)} class folders but {spec.name} has "
            f"{spec.num_classes}; use --data image_folder for other trees"
        )
    first_class = [path for path, _ in list_samples(tree.train, tree.classes[:1])]
    mode, width, height = probe(first_class, bad_files)
    if (mode, width, height) != ("RGB", 32, 32):
        raise LowbitError(
            f"{tree.train / tree.classes[0]} holds {width}x{height} {mode} images but "
            f"{spec.name} images are 32x32 RGB; use --data image_folder for other images"
        )
    data = decoded_tree(tree, workers, bad_files)
    return data["train_images"], data["train_labels"], data["test_images"], data["test_labels"]


def cifar_bundle(
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    options: DataOptions,
    spec: CifarSpec,
    bad_files: BadFiles | None = None,
) -> DataBundle:
    """The loaders of ``spec``'s four tensors as ``lowbit train`` builds them: normalized with
    the spec's statistics, training batches pad-4 random-cropped and flipped."""
    return tensor_bundle(
        *tensors, options, num_classes=spec.num_classes, mean=spec.mean, std=spec.std,
        pad=4, flip=True, bad_files=bad_files,
    )


def build_cifar(options: DataOptions, spec: CifarSpec) -> DataBundle:
    data_dir = require_dir(options.data_dir, spec.name, spec.expected)
    folder = find_pickle_folder(data_dir, spec)
    bad_files = BadFiles(options.skip_bad_files)
    if folder is not None:
        tensors = load_pickles(folder, spec)
    else:
        tensors = load_tree(data_dir, spec, options.workers, bad_files)
    return cifar_bundle(tensors, options, spec, bad_files)


@register_dataset("cifar10")
def build_cifar10(options: DataOptions) -> DataBundle:
    return build_cifar(options, CIFAR10)


@register_dataset("cifar100")
def build_cifar100(options: DataOptions) -> DataBundle:
    return build_cifar(options, CIFAR100)
