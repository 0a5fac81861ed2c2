"""Fused CPU kernels for the quantizers, compiled from ``kernels.c`` on first use.

On the CPU an eager quantizer costs several passes over memory: APoT's level lookup is a
multiply, a clamp, a conversion and ``index_select`` (which runs on one thread), every
clipping quantizer's backward is a masked copy and two dot products, SRQ's backward some
forty passes around the sigmoids of each run of grid points, and RQ builds ``numel x K``
tensors for its Gumbel-softmax. The
kernels in ``kernels.c`` do each of these in one vectorized pass on every thread. Where an
eager formula exists for the same result, they use its float32 arithmetic and return its
bits (sums of the scale gradients are accumulated in double, so those differ from the eager
dot products in the last bits; SRQ's and RQ's gradients are computed more precisely than the
eager float32 formulas). RQ's noise is counter-based (``lowbit.quant.noise``): one seed
gives the same uniforms on the kernel and in the formula.

The library is compiled once per machine with the system C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``; about a second) into ``kernels/`` of the lowbit cache folder
(``$LOWBIT_CACHE``, default ``~/.cache/lowbit``: ``lowbit.files.cache_root``) and loaded
with ctypes. Without a compiler, if the build fails, or with ``LOWBIT_NATIVE=0``, the
quantizers run their eager PyTorch formulas: the same results, slower.

Each quantizer is an operator of the ``lowbit`` library (``torch.library.custom_op``) whose
default implementation, for every device, is its eager formula; a kernel here is registered
as that operator's CPU implementation, which calls it when ``serves(...)`` accepts the
tensors (float32, one dense layout, the library loaded) and the formula otherwise. Under
``torch.compile`` the operator stays one opaque call, so a compiled CPU model runs the same
kernels.

Adding a kernel: a C function ``lowbit_NAME`` in ``kernels.c`` (a ``VECTORIZED`` range
function over contiguous memory plus an OpenMP wrapper, as the others), its ctypes signature
in ``_SIGNATURES``, a typed wrapper here, a CPU implementation of the quantizer's operator
(``OP.register_kernel("cpu")``) that calls the wrapper where ``serves(...)`` holds and the
operator's formula otherwise, and a test in ``tests/quant/test_native.py`` comparing the
operator against its formula.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from lowbit.files import cache_root

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math")
# Tried in order: OpenMP threads, then one thread (e.g. Apple clang), then without the AVX2
# clones (C libraries without ifuncs, e.g. musl).
ATTEMPTS = (("-fopenmp",), (), ("-fopenmp", "-DLOWBIT_BASELINE_ONLY"), ("-DLOWBIT_BASELINE_ONLY",))
# Modes of ``uniform`` (kernels.c).
ROUND_CLAMP, SYMMETRIC, CLIP_ROUND = 0, 1, 2

_pointer, _size, _float, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_double = ctypes.c_double
_doubles = ctypes.POINTER(ctypes.c_double)
_SIGNATURES = {  # name: (result type, argument types)
    "lowbit_grid_lookup": (
        None, [_pointer, _pointer, _size, _pointer, _size, _float, _float, _int]
    ),
    "lowbit_search_lookup": (None, [_pointer, _pointer, _size, _pointer, _int, _pointer, _int]),
    "lowbit_uniform": (
        None, [_pointer, _pointer, _size, _int, _float, _float, _float, _float, _int]
    ),
    "lowbit_srq_round": (
        None, [_pointer, _pointer, _pointer, _int, _size, _float, _float, _float, _int]
    ),
    "lowbit_srq_backward": (None, [
        _pointer, _pointer, _pointer, _int, _pointer, _size, _double, _double, _float, _float,
        _doubles, _int,
    ]),
    "lowbit_srq_masked_backward": (_int, [
        _pointer, _pointer, _pointer, _int, _pointer, _size, _double, _double, _float,
        ctypes.c_int32, _pointer, _pointer, _pointer, _pointer, _pointer, _pointer, _int,
        _doubles, _int,
    ]),
    "lowbit_clip_backward": (
        None, [_pointer, _pointer, _pointer, _pointer, _size, _float, _float, _doubles, _int]
    ),
    "lowbit_rq": (_int, [
        _pointer, _pointer, _pointer, _size, _float, _float, _float, _float, _float,
        ctypes.c_int32, ctypes.c_uint64, _doubles, _int,
    ]),
    "lowbit_uniforms": (None, [_pointer, _size, ctypes.c_int32, ctypes.c_uint64, _size]),
}


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cache_dir() -> Path:
    return cache_root() / "kernels"


def _build(compiler: str) -> Path:
    """Path of the compiled library, building it unless this exact build is cached."""
    source = SOURCE.read_bytes()
    settings = repr((compiler, FLAGS, ATTEMPTS, platform.machine(), sys.platform)).encode()
    key = hashlib.sha256(source + settings).hexdigest()[:16]
    directory = _cache_dir()
    target = directory / f"kernels-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name, then renamed: processes building at once (torchrun ranks)
    # never load a half-written file.
    handle, partial = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(handle)
    try:
        errors = ""
        for extra in ATTEMPTS:
            command = [compiler, *FLAGS, *extra, str(SOURCE), "-o", partial]
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if result.returncode == 0:
                os.replace(partial, target)
                return target
            errors += result.stderr
        raise OSError(errors.strip() or f"{compiler} failed")
    finally:
        if os.path.exists(partial):
            os.remove(partial)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or ``None`` (disabled, no compiler, or the build failed: warned)."""
    if os.environ.get("LOWBIT_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    compiler = _compiler()
    if compiler is None:
        warnings.warn(
            "lowbit: no C compiler found (set CC), so quantizers run as plain PyTorch ops "
            "on the CPU: same results, slower training; LOWBIT_NATIVE=0 silences this",
            stacklevel=2,
        )
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as error:  # incl. a read-only cache, a hang
        warnings.warn(
            f"lowbit: building the CPU kernels failed, quantizers run as plain PyTorch ops "
            f"(same results, slower); LOWBIT_NATIVE=0 silences this. {error}",
            stacklevel=2,
        )
        return None
    for name, (result, arguments) in _SIGNATURES.items():
        getattr(lib, name).argtypes = arguments
        getattr(lib, name).restype = result
    return lib


def serves(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can serve these tensors: float32 on the CPU, of one shape and all
    laid out alike in one dense block (contiguous or channels-last), and the library loaded.
    (Called on every quantizer pass: kept cheap.)"""
    first = tensors[0]
    if not first.is_cpu or library() is None:
        return False
    shape = first.shape
    for tensor in tensors:
        if tensor.dtype is not torch.float32 or not tensor.is_cpu or tensor.shape != shape:
            return False
    if all(tensor.is_contiguous() for tensor in tensors):
        return True
    stride = first.stride()
    return first.dim() == 4 and all(
        tensor.stride() == stride and tensor.is_contiguous(memory_format=torch.channels_last)
        for tensor in tensors
    )


def grid_lookup(x: torch.Tensor, table: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    """``table[int(clamp(x * scale - offset, 0, len(table) - 1))]`` (NaN stays NaN);
    ``table`` a contiguous float32 tensor, ``scale`` and ``offset`` float32 values."""
    out = torch.empty_like(x)
    library().lowbit_grid_lookup(
        x.data_ptr(), out.data_ptr(), x.numel(), table.data_ptr(), table.numel() - 1, scale,
        offset, torch.get_num_threads(),
    )
    return out


def search_lookup(
    x: torch.Tensor, levels: torch.Tensor, boundaries: torch.Tensor
) -> torch.Tensor:
    """``levels[bucketize(x, boundaries, right=True)]`` (NaN stays NaN) by a branchless
    binary search; ``levels`` has one entry more than the sorted ``boundaries``."""
    steps = max(boundaries.numel(), 1).bit_length()
    padding = (1 << steps) - 1 - boundaries.numel()
    boundaries = torch.cat([boundaries, boundaries.new_full((padding,), math.inf)])
    levels = levels.contiguous()
    out = torch.empty_like(x)
    library().lowbit_search_lookup(
        x.data_ptr(), out.data_ptr(), x.numel(), boundaries.data_ptr(), steps,
        levels.data_ptr(), torch.get_num_threads(),
    )
    return out


def uniform(
    x: torch.Tensor, mode: int, step: float, inverse: float, q_min: float, top: float
) -> torch.Tensor:
    """One of the uniform roundings of ``kernels.c`` (``ROUND_CLAMP``, ``SYMMETRIC``,
    ``CLIP_ROUND``) with float32 ``step`` (and ``inverse = 1/step`` for ``CLIP_ROUND``)."""
    out = torch.empty_like(x)
    library().lowbit_uniform(
        x.data_ptr(), out.data_ptr(), x.numel(), mode, step, inverse, q_min, top,
        torch.get_num_threads(),
    )
    return out


def clip_backward(
    grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor, low: float, high: float, closed: bool
) -> tuple[torch.Tensor, tuple[float, float, float, float]]:
    """``grad`` zeroed outside ``[low, high]`` (``(low, high)`` if not ``closed``), with
    ``sum(grad * out)``, ``sum(grad_x * x)`` and the sums of ``grad`` above and below the
    range, from the same pass."""
    if not closed:  # the open range is the closed one between the next floats inside it
        bounds = np.array([low, high], dtype=np.float32)
        low, high = np.nextafter(bounds, bounds[::-1]).tolist()
    grad_x = torch.empty_like(x)
    sums = (ctypes.c_double * 4)()
    library().lowbit_clip_backward(
        grad.data_ptr(), x.data_ptr(), out.data_ptr(), grad_x.data_ptr(), x.numel(),
        low, high, sums, torch.get_num_threads(),
    )
    return grad_x, tuple(sums)


def srq_round(
    x: torch.Tensor, alpha: float, lo: int, hi: int, index_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """SRQ's forward without masks: ``alpha * k`` with ``k = clamp(floor(x / alpha + 1/2),
    lo, hi)``, and ``k`` as ``index_dtype`` (int8 or int16, wide enough for the grid)."""
    out = torch.empty_like(x)
    k = torch.empty_like(x, dtype=index_dtype)
    library().lowbit_srq_round(
        x.data_ptr(), out.data_ptr(), k.data_ptr(), int(index_dtype == torch.int16), x.numel(),
        alpha, lo, hi, torch.get_num_threads(),
    )
    return out, k


def srq_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    k: torch.Tensor,
    alpha: float,
    sigma: float,
    lo: int,
    hi: int,
) -> tuple[torch.Tensor, list[float]]:
    """``grad_x`` of SRQ without masks (the straight-through estimator through
    ``r = pi_k / sum_j pi_j``, ``kernels.c``) and the sums ``(sum(grad k), alpha terms, sigma
    terms)``: ``dL/dalpha`` is the first two added, ``dL/dsigma`` the third."""
    grad_x = torch.empty_like(x)
    sums = (ctypes.c_double * 3)()
    library().lowbit_srq_backward(
        grad.data_ptr(), x.data_ptr(), k.data_ptr(), int(k.dtype == torch.int16),
        grad_x.data_ptr(), x.numel(), alpha, sigma, lo, hi, sums, torch.get_num_threads(),
    )
    return grad_x, list(sums)


def srq_masked_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    k: torch.Tensor,
    alpha: float,
    sigma: float,
    runs: list[tuple[int, int, int]],
    gates: list[float],
    want_gates: bool,
) -> tuple[torch.Tensor, list[float], list[float] | None]:
    """``grad_x`` of SRQ with DropBits masks (the straight-through estimator through
    ``r = Z pi_k / sum_j Z_j pi_j``, ``kernels.c``), the sums ``(sum(grad k), alpha terms,
    sigma terms)`` and, with ``want_gates``, the gradient of every gate in ``gates``;
    ``runs`` as ``lowbit.quant.dropbits.mask_runs`` gives them."""
    lo = runs[0][0]
    count = len(runs)
    first = torch.tensor([run[0] for run in runs], dtype=torch.float32)
    last = torch.tensor([run[1] for run in runs], dtype=torch.float32)
    group = torch.tensor([run[2] for run in runs], dtype=torch.int32)
    run_gate = torch.tensor([1.0 if g < 0 else gates[g] for _, _, g in runs], dtype=torch.float32)
    point_run = torch.cat([
        torch.full((run[1] - run[0] + 1,), j, dtype=torch.int32) for j, run in enumerate(runs)
    ])
    point_log_gate = run_gate.log().index_select(0, point_run)
    grad_x = torch.empty_like(x)
    sums = (ctypes.c_double * (3 + 2 * count))()
    status = library().lowbit_srq_masked_backward(
        grad.data_ptr(), x.data_ptr(), k.data_ptr(), int(k.dtype == torch.int16),
        grad_x.data_ptr(), x.numel(), alpha, sigma, lo, count, first.data_ptr(),
        last.data_ptr(), run_gate.data_ptr(), group.data_ptr(), point_log_gate.data_ptr(),
        point_run.data_ptr(), int(want_gates), sums, torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError(f"SRQ kernel: no memory for {count} runs of grid points")
    if not want_gates:
        return grad_x, list(sums[:3]), None
    grad_gates = [0.0] * len(gates)
    for j, (_, _, g) in enumerate(runs):
        if g >= 0:
            grad_gates[g] += sums[3 + j] - sums[3 + count + j]
    return grad_x, list(sums[:3]), grad_gates


def rq(
    x: torch.Tensor,
    grad: torch.Tensor | None,
    alpha: float,
    sigma: float,
    temperature: float,
    lo: int,
    hi: int,
    size: int,
    seed: int,
) -> tuple[torch.Tensor, tuple[float, float]]:
    """RQ's Gumbel-softmax pass over windows of ``size`` grid points (``kernels.c``), its
    noise drawn from ``seed``: the output (``grad=None``), or ``grad_x`` and the sums of the
    alpha and sigma gradients (same seed, same noise)."""
    result = torch.empty_like(x)
    sums = (ctypes.c_double * 2)()
    status = library().lowbit_rq(
        x.data_ptr(), None if grad is None else grad.data_ptr(), result.data_ptr(), x.numel(),
        alpha, sigma, temperature, lo, hi, size, seed, sums, torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError(f"RQ kernel: no memory for windows of {size} grid points")
    return result, (sums[0], sums[1])


def uniforms(seed: int, elements: int, slots: int) -> torch.Tensor:
    """The uniform numbers ``rq`` draws from ``seed``, shape ``(elements, slots)`` (tests)."""
    out = torch.empty(elements, slots)
    library().lowbit_uniforms(out.data_ptr(), elements, slots, seed, 0)
    return out
