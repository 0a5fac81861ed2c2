"""Decoded data sets on disk, keyed by the files they came from.

Decoding tens of thousands of small JPEGs takes a minute; loading the resulting uint8 tensor
takes a fraction of a second. Entries live in ``data/`` of the lowbit cache folder
(``$LOWBIT_CACHE``, default ``~/.cache/lowbit``: ``lowbit.files.cache_root``) rather than
beside the data, because data directories are often read-only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lowbit.files import cache_root


def cache_dir() -> Path:
    return cache_root() / "data"


def tree_key(root: Path, files: Sequence[str]) -> str:
    """A digest of ``root``'s resolved path and each file's relative path, size and mtime.

    ``files`` are paths under ``root`` spelled as ``root`` is. Any added, removed, renamed or
    rewritten file changes the key, so a changed tree is decoded again instead of being
    served from a stale entry.
    """
    digest = hashlib.sha256(str(root.resolve()).encode())
    start = len(os.path.join(root, ""))  # os.path.relpath is slow for 10^5 files
    for path in files:
        stat = os.stat(path)
        relative = path[start:]
        digest.update(f"\n{relative}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _entry_prefix(root: Path) -> str:
    # The folder name keeps entries readable; the path digest keeps two trees that share a
    # folder name (two copies of "cifar10-jpg") from evicting each other.
    resolved = root.resolve()
    return f"{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def cache_path(root: Path, key: str) -> Path:
    return cache_dir() / f"{_entry_prefix(root)}-{key}.pt"


def load_cached(root: Path, key: str) -> dict[str, Any] | None:
    """The entry saved for ``root`` under ``key``, or ``None`` if there is none."""
    path = cache_path(root, key)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def save_cached(root: Path, key: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (temporary file + ``os.replace``) and drop older entries.

    Older entries for the same ``root`` describe a tree that no longer exists.
    """
    path = cache_path(root, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)
    for stale in path.parent.glob(f"{_entry_prefix(root)}-*.pt"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return path
