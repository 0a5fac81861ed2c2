"""The decode cache: where it lives, what its key covers, atomic writes, stale entries."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lowbit.data import cache
from lowbit.data.cache import cache_path, load_cached, save_cached, tree_key


def write_files(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_bytes(b"x")
    return [str(root / name) for name in names]


def test_cache_dir_follows_lowbit_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "elsewhere"))
    assert cache.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("LOWBIT_CACHE")
    assert str(cache.cache_dir()).endswith(os.path.join(".cache", "lowbit"))


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
