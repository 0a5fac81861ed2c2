import sys

import pytest
import torch

from lowbit.allocator import reuse_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning only")
def test_sets_glibc_thresholds_and_memory_still_works(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert reuse_freed_memory()
    for _ in range(3):  # large tensors allocate, free and reuse
        x = torch.ones(9_000_000)
        assert float(x.sum()) == 9_000_000


def test_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("LOWBIT_KEEP_MEMORY", "0")
    assert not reuse_freed_memory()


def test_skipped_under_a_preloaded_allocator(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert not reuse_freed_memory()
