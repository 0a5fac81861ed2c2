"""The straight-through gradients that every clipping quantizer shares, in few passes.

A quantizer ``Q(x) = s * clip(round(x / s))`` (RCF, LSQ / UniQ, PACT) hands its input the
upstream gradient inside the clipping range and zero outside (``straight_through``); its
scale ``s`` (alpha, the step) gets ``(sum(g * Q) - sum(g_x * x)) / s`` whenever ``dQ/ds`` is
``(Q - x) / s`` inside the range and ``Q / s`` outside it (APoT Eq. 8, UniQ Eq. 6, PACT), so
two dot products and no per-element temporary (``scale_gradient``).
"""

from __future__ import annotations

import math

import torch


def straight_through(
    grad: torch.Tensor,
    x: torch.Tensor,
    low: torch.Tensor | None,
    high: torch.Tensor | None,
) -> torch.Tensor:
    """``grad`` where ``low <= x <= high``, zero elsewhere; a bound of ``None`` is no bound.

    ``low`` / ``high`` are tensors broadcasting against ``x`` (a scalar, or one per channel).
    With scalar bounds on the CPU this is one fused pass (hardtanh's backward, whose open
    range becomes the closed one with the bounds moved one step outward in ``x``'s dtype);
    a compare-and-select costs about six passes there. Elsewhere (GPU, ``torch.compile``)
    the compare-and-select is fast and needs no host copy of the bounds. (The fused pass
    also gives ``x = -inf`` or ``+inf`` zero on an unbounded side.)
    """
    if x.device.type == "cpu" and not torch.compiler.is_compiling() and all(
        bound is None or bound.numel() == 1 for bound in (low, high)
    ):
        return torch.ops.aten.hardtanh_backward(
            grad, x, _outward(low, x, -math.inf), _outward(high, x, math.inf)
        )
    inside = None
    for bound, above in ((low, True), (high, False)):
        if bound is not None:
            side = x >= bound if above else x <= bound
            inside = side if inside is None else inside & side
    return grad if inside is None else torch.where(inside, grad, 0.0)


def _outward(bound: torch.Tensor | None, x: torch.Tensor, direction: float) -> float:
    """The next value of ``x``'s dtype beyond ``bound`` towards ``direction`` (a Python float)."""
    if bound is None:
        return direction
    value = bound.detach().reshape(()).to(x.dtype)
    return float(torch.nextafter(value, value.new_tensor(direction)))


def scale_gradient(
    grad: torch.Tensor, grad_x: torch.Tensor, x: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """``sum(grad * out) - sum(grad_x * x)``: the scale's gradient times the scale, for
    ``grad_x = straight_through(grad, x, ...)`` (see the module docstring)."""
    flat_g, flat_gx = grad.reshape(-1), grad_x.reshape(-1)
    return flat_g.dot(out.reshape(-1)) - flat_gx.dot(x.reshape(-1))
