"""Integer codes: from quantized values to level indices, and packed to their bit-width.

Packing is little-endian at the bit level: code ``i`` occupies bits ``i*b .. i*b + b - 1`` of
the byte stream, least significant bit first, the last byte padded with zeros.
"""

from __future__ import annotations

import torch

from lowbit.errors import LowbitError
from lowbit.quant.project import midpoints

# Decoded values may differ from the model's by float rounding only (e.g. maxscale's
# straight-through ``(q - w) + w``); anything larger means the codes are wrong.
DECODE_TOLERANCE = 1e-6
CHUNK = 2**20  # codes packed at a time: bounds the (CHUNK, bits) bit matrix


def broadcast_scale(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-layer ``()`` or per-output-channel ``(C,)`` scale shaped to multiply a tensor
    with ``ndim`` dimensions whose dim 0 is the channel."""
    return scale.view(-1, *([1] * (ndim - 1))) if scale.dim() == 1 else scale


def encode(values: torch.Tensor, levels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Indices into ``levels`` (sorted, unscaled) of quantized ``values = scale * level``.

    ``scale`` is ``()`` or ``(C,)`` over dim 0 of ``values``. Raises if some value is not on
    the scaled grid: the quantizer does not compute what its grid description says.
    """
    unscaled = values / broadcast_scale(scale.to(values), values.dim())
    codes = torch.bucketize(unscaled, midpoints(levels.to(values)))
    if values.numel():
        error = float((decode(codes, levels, scale) - values).abs().max())
        if error > DECODE_TOLERANCE * max(float(values.abs().max()), 1e-12):
            raise LowbitError(
                f"quantized values are off the quantizer's grid (by up to {error:.3g}); its "
                "output is not scale * level and cannot be exported as codes"
            )
    return codes


def decode(codes: torch.Tensor, levels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * levels[codes]`` in float32, the arithmetic of the fake-quant forward."""
    values = levels.to(device=codes.device, dtype=torch.float32)[codes]
    return values * broadcast_scale(scale.to(values), codes.dim())


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes in ``[0, 2**bits)`` as a flat ``uint8`` tensor of ``ceil(numel * bits / 8)``
    bytes."""
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise LowbitError(f"codes do not fit in {bits} bits")
    # Chunks of a multiple of 8 codes start on a byte boundary and bound the bit matrix.
    chunks = [_pack_chunk(flat[i : i + CHUNK], bits) for i in range(0, flat.numel(), CHUNK)]
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` codes of a ``pack``-ed byte stream, as ``int64``."""
    if packed.numel() * 8 < count * bits:
        raise LowbitError(f"{packed.numel()} bytes cannot hold {count} codes of {bits} bits")
    step = CHUNK * bits // 8
    chunks = [
        _unpack_chunk(packed[i * step : (i + 1) * step], bits, min(CHUNK, count - i * CHUNK))
        for i in range(-(-count // CHUNK))
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.int64)



def _pack_chunk(codes: torch.Tensor, bits: int) -> torch.Tensor:
    stream = ((codes[:, None] >> torch.arange(bits)) & 1).to(torch.uint8).reshape(-1)
    stream = torch.nn.functional.pad(stream, (0, -stream.numel() % 8))
    return (stream.view(-1, 8) << torch.arange(8, dtype=torch.uint8)).sum(
        dim=1, dtype=torch.uint8
    )


def _unpack_chunk(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    stream = (packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1
    stream = stream.reshape(-1)[: count * bits].view(count, bits).to(torch.int64)
    return (stream << torch.arange(bits)).sum(dim=1)
