"""Data sets: the embedded default, and loaders for the real on-disk formats."""

from lowbit.data import digits  # noqa: F401  (registers "digits")
from lowbit.data.registry import DataBundle, available_datasets, build_data, register_dataset

__all__ = ["DataBundle", "available_datasets", "build_data", "register_dataset"]
