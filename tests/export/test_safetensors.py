"""Exports are written with the ``safetensors`` package and read back by the deploy runtime,
including files of lowbit's earlier hand-written writer (the same format)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open

from lowbit.errors import LowbitError
from lowbit.export import export_model
from lowbit.export.runtime import read_tensors


def legacy_file(path, tensors: dict[str, torch.Tensor]) -> None:
    """The layout lowbit's earlier writer produced, from the format's description
    (huggingface.co/docs/safetensors): a little-endian u64 header length, the JSON header
    padded with spaces to a multiple of 8, then the tensors' bytes in insertion order."""
    header, blobs, offset = {"__metadata__": {"format": "lowbit-export"}}, [], 0
    names = {torch.float32: "F32", torch.uint8: "U8"}
    for name, tensor in tensors.items():
        blob = tensor.contiguous().view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_files_of_the_earlier_writer_still_load(tmp_path):
    # Odd sizes first, so that the float32 tensor after them starts unaligned.
    tensors = {"codes": torch.arange(7, dtype=torch.uint8), "scales": torch.randn(3),
               "floats": torch.randn(2, 5)}
    legacy_file(tmp_path / "model.safetensors", tensors)
    loaded = read_tensors(tmp_path / "model.safetensors")
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in tensors.items())


def test_an_export_is_a_safetensors_file_with_its_format(tmp_path, trained_like):
    model, _ = trained_like("apot", 4)
    export_model(model, tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "lowbit-export"}
        assert f.get_tensor("codes").dtype == torch.uint8
        assert f.get_tensor("scales").dtype == torch.float32


@pytest.mark.parametrize("content", [b"\x05\x00\x00\x00\x00\x00\x00\x00{oops", b"xx"])
def test_not_a_safetensors_file(tmp_path, content):
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(LowbitError, match="not a readable safetensors file"):
        read_tensors(tmp_path / "bad")
