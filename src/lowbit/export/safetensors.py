"""The safetensors file format, written and read without the ``safetensors`` package.

Layout (https://huggingface.co/docs/safetensors): an unsigned little-endian 64-bit header
length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}`` padded with spaces to a multiple of 8, then the tensors' bytes
(little-endian, row-major) back to back, offsets relative to the end of the header.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import torch

from lowbit.errors import LowbitError

DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_TORCH_DTYPES = {name: dtype for dtype, name in DTYPES.items()}


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if sys.byteorder != "little" and flat.element_size() > 1:
        raise LowbitError("safetensors export needs a little-endian machine")
    return flat.view(torch.uint8).numpy().tobytes()


def write_safetensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` (in the given order) and string ``metadata`` to ``path``."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    blobs, offset = [], 0
    for name, tensor in tensors.items():
        if tensor.dtype not in DTYPES:
            raise LowbitError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors lacks")
        blob = _raw_bytes(tensor)
        header[name] = {
            "dtype": DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; a clear error if it is not one."""
    data = Path(path).read_bytes()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
    except (struct.error, ValueError):
        raise LowbitError(f"{str(path)!r} is not a safetensors file") from None
    metadata = header.pop("__metadata__", {}) or {}
    body = memoryview(data)[8 + length :]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        if entry["dtype"] not in _TORCH_DTYPES or end > len(body):
            raise LowbitError(f"{str(path)!r} is damaged: bad entry for tensor {name!r}")
        dtype = _TORCH_DTYPES[entry["dtype"]]
        raw = bytearray(body[begin:end])  # a private, writable copy for torch.frombuffer
        flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=dtype)
        tensors[name] = flat.view(dtype).reshape(entry["shape"])
    return tensors, metadata
