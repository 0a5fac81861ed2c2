"""Counter-based uniform noise: a number per (seed, element, slot), from a hash, not a stream.

RQ's Gumbel noise is drawn this way on every path. The CPU kernel (``kernels.c``,
``uniform_at``) hashes in registers and regenerates the noise in the backward pass instead of
storing it; ``counter_uniforms`` is the same hash in integer tensor ops, so the eager path (any
device) draws the same numbers and a run does not depend on whether the machine had a C
compiler or a GPU.

The hash is murmur3's 32-bit finalizer applied twice: over the element's low 32 bits with the
seed's low word, then over that, the slot's golden-ratio multiple plus the element's high
bits, and the seed's high word. The result's top 23 bits give ``(bits + 1/2) / 2^23`` in
(0, 1), never 0 or 1, so ``-log(-log u)`` is finite (``unit_interval``: with 24 bits the
largest, ``2^24 - 1/2``, would round to ``2^24`` in float32 and give u = 1).
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
GOLDEN32 = 0x9E3779B9


def _times(h: torch.Tensor, constant: int) -> torch.Tensor:
    """``h * constant mod 2^32`` for ``h`` in [0, 2^32): the int64 product wraps modulo 2^64
    (two's complement), which keeps its low 32 bits exact."""
    return (h * constant) & MASK32


def _mix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _times(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _times(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def element_counters(x: torch.Tensor) -> torch.Tensor:
    """Each element's position in ``x``'s memory (int64, ``x``'s shape): ``0 .. numel - 1`` for
    a contiguous or channels-last tensor, the order in which the CPU kernel numbers them."""
    index = torch.zeros((), dtype=torch.int64, device=x.device)
    for dim, (size, stride) in enumerate(zip(x.shape, x.stride())):
        shape = [1] * x.dim()
        shape[dim] = size
        index = index + torch.arange(size, device=x.device).view(shape) * stride
    return index.expand(x.shape)


def counter_uniforms(seed: int, counters: torch.Tensor, slots: int) -> torch.Tensor:
    """float32 uniforms in (0, 1) of shape ``counters.shape + (slots,)``: number ``m`` of
    element ``counters[i]`` under ``seed`` (a 64-bit integer), as ``kernels.c`` draws it."""
    seed_low, seed_high = seed & MASK32, (seed >> 32) & MASK32
    low, high = counters & MASK32, (counters >> 32) & MASK32
    first = _mix32(low ^ seed_low).unsqueeze(-1)
    slot = torch.arange(slots, dtype=torch.int64, device=counters.device)
    salt = (_times(slot, GOLDEN32) + high.unsqueeze(-1)) & MASK32
    return unit_interval(_mix32(first ^ salt ^ seed_high))


def unit_interval(bits: torch.Tensor) -> torch.Tensor:
    """32-bit hashes (int64 in [0, 2^32)) as float32 numbers strictly inside (0, 1)."""
    return ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / 2**23)


def counter_gumbels(
    seed: int | torch.Tensor, counters: torch.Tensor, slots: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gumbel(0, 1) samples ``-log(-log u)`` of shape ``counters.shape + (slots,)``, ``u`` the
    ``counter_uniforms`` (strictly inside (0, 1): every sample finite), computed in ``dtype``."""
    uniforms = counter_uniforms(seed, counters, slots).to(dtype)
    return uniforms.log_().neg_().log_().neg_()
