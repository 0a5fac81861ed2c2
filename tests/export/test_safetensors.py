"""The safetensors writer and reader (lowbit.export.safetensors), checked byte for byte."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.export.safetensors import read_safetensors, write_safetensors


def test_round_trip_of_every_dtype(tmp_path):
    tensors = {
        "f32": torch.randn(3, 4),
        "f64": torch.randn(2, dtype=torch.float64),
        "bf16": torch.randn(5).to(torch.bfloat16),
        "i64": torch.tensor([-1, 2**40]),
        "u8": torch.arange(7, dtype=torch.uint8),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(2.5),
    }
    write_safetensors(tmp_path / "t.safetensors", tensors, {"format": "test"})
    loaded, metadata = read_safetensors(tmp_path / "t.safetensors")
    assert metadata == {"format": "test"} and list(loaded) == list(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)


def test_layout_matches_the_format(tmp_path):
    """8-byte little-endian header size, JSON header padded to 8, then the raw bytes."""
    path = tmp_path / "t.safetensors"
    tensors = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3], dtype=torch.int8)}
    write_safetensors(path, tensors)
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    assert length % 8 == 0
    assert header["a"] == {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    assert header["b"] == {"dtype": "I8", "shape": [1], "data_offsets": [8, 9]}
    assert data[8 + length :] == struct.pack("<2f", 1.0, 2.0) + b"\x03"


def test_the_safetensors_package_reads_our_files(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = {"w": torch.randn(4, 3), "codes": torch.arange(9, dtype=torch.uint8)}
    write_safetensors(tmp_path / "t.safetensors", tensors)
    loaded = safetensors_torch.load_file(str(tmp_path / "t.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_not_a_safetensors_file(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(LowbitError, match="not a safetensors file"):
        read_safetensors(tmp_path / "bad")
