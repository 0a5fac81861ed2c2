"""Data sets: the embedded default, and loaders for the real on-disk formats."""

# Importing a data set's module registers it.
from lowbit.data import cifar, digits, image_folder, imagenet, mnist  # noqa: F401
from lowbit.data.registry import DataBundle, available_datasets, build_data, register_dataset

__all__ = ["DataBundle", "available_datasets", "build_data", "register_dataset"]
