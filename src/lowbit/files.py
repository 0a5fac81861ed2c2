"""Files replaced atomically: written under a temporary name beside the target, then renamed
over it, so a reader (or a kill mid-write) sees the old file or the new one, never a part.
Also the one cache folder that everything lowbit can rebuild is kept under."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` for the block to write; when the block succeeds the
    file is synced to disk, given the mode a newly created file would have, and renamed onto
    ``path``; when it raises, the temporary file is deleted and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp's 0600 is for the temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def cache_root() -> Path:
    """Where lowbit keeps what it can rebuild (decoded data sets, compiled kernels):
    ``$LOWBIT_CACHE`` if set, else the platform's cache folder: ``~/Library/Caches/lowbit``
    on macOS, ``%LOCALAPPDATA%\\lowbit\\Cache`` on Windows, ``$XDG_CACHE_HOME/lowbit`` or
    ``~/.cache/lowbit`` elsewhere."""
    override = os.environ.get("LOWBIT_CACHE")
    if override:
        return Path(override).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "lowbit"
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
        return Path(local) / "lowbit" / "Cache"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says to ignore a relative path: it would move with the working directory.
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "lowbit"
