"""``atomic_write``: the new file appears whole with the umask's mode, or the old one stays."""

import os

import pytest

from lowbit.files import atomic_write


def test_replaces_the_file_with_the_umasks_default_mode(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    mask = os.umask(0o022)
    try:
        with atomic_write(target) as temporary:
            assert temporary.parent == target.parent and temporary != target
            temporary.write_text("new")
    finally:
        os.umask(mask)
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as temporary:
        temporary.write_text("part")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
