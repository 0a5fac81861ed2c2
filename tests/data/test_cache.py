"""The cache root, and the decode cache: where it lives, what its key covers, atomic writes,
stale entries."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from lowbit.data import cache
from lowbit.data.cache import cache_path, load_cached, save_cached, tree_key
from lowbit.files import cache_root
from lowbit.quant import native


def write_files(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_bytes(b"x")
    return [str(root / name) for name in names]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh home folder and no cache settings in the environment."""
    for name in ("LOWBIT_CACHE", "XDG_CACHE_HOME", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_cache_root_is_lowbit_cache_else_the_platform_cache_folder(tmp_path, home, monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert cache_root() == home / ".cache" / "lowbit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lowbit"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # the XDG spec: ignore it
    assert cache_root() == home / ".cache" / "lowbit"

    monkeypatch.setattr(sys, "platform", "darwin")
    assert cache_root() == home / "Library" / "Caches" / "lowbit"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert cache_root() == tmp_path / "local" / "lowbit" / "Cache"

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere"
    monkeypatch.setenv("LOWBIT_CACHE", "~/lowbit-cache")
    assert cache_root() == home / "lowbit-cache"


def test_decoded_data_and_compiled_kernels_live_under_the_one_root(tmp_path, home, monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert cache.cache_dir() == home / ".cache" / "lowbit" / "data"
    assert native._cache_dir() == home / ".cache" / "lowbit" / "kernels"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "lowbit" / "data"
    assert native._cache_dir() == tmp_path / "xdg" / "lowbit" / "kernels"
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "root"))
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "old"))  # no longer read
    assert cache.cache_dir() == tmp_path / "root" / "data"
    assert native._cache_dir() == tmp_path / "root" / "kernels"


@pytest.mark.skipif(native._compiler() is None, reason="needs a C compiler")
def test_kernels_are_built_into_the_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "root"))
    built = native._build(native._compiler())
    assert built.parent == tmp_path / "root" / "kernels"
    assert [p.name for p in built.parent.iterdir()] == [built.name]
    shutil.rmtree(tmp_path / "root")  # clearing the cache is removing the folder
    assert native._build(native._compiler()).is_file()


def test_tree_key_changes_with_names_sizes_and_mtimes_but_not_root_spelling(
    tmp_path, monkeypatch
):
    root = tmp_path / "tree"
    files = write_files(root, ["a.png", "b.png"])
    key = tree_key(root, files)
    monkeypatch.chdir(tmp_path)
    assert tree_key(Path("tree"), [os.path.join("tree", "a.png"), "tree/b.png"]) == key
    assert tree_key(root, files[:1]) != key

    stat = os.stat(files[0])
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    touched = tree_key(root, files)
    assert touched != key
    (root / "a.png").write_bytes(b"xy")
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert tree_key(root, files) != touched

    os.rename(files[1], root / "c.png")
    assert tree_key(root, [files[0], str(root / "c.png")]) != key


def test_save_is_atomic_and_replaces_older_entries_of_the_same_tree(tmp_path, cache_dir):
    root, other = tmp_path / "tree", tmp_path / "other" / "tree"
    save_cached(other, "k0", {"x": torch.zeros(1)})
    save_cached(root, "k1", {"x": torch.ones(2)})
    save_cached(root, "k2", {"x": torch.arange(3)})
    assert load_cached(root, "k1") is None
    assert torch.equal(load_cached(root, "k2")["x"], torch.arange(3))
    assert load_cached(other, "k0") is not None, "a tree with the same folder name is kept"
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        [cache_path(root, "k2").name, cache_path(other, "k0").name]
    ), "no temporary files are left behind"
