"""The straight-through gradients that every clipping quantizer shares, in few passes.

A quantizer ``Q(x) = s * clip(round(x / s))`` (RCF, LSQ / UniQ, PACT) hands its input the
upstream gradient inside the clipping range and zero outside (``straight_through``); its
scale ``s`` (alpha, the step) gets ``(sum(g * Q) - sum(g_x * x)) / s`` whenever ``dQ/ds`` is
``(Q - x) / s`` inside the range and ``Q / s`` outside it (APoT Eq. 8, UniQ Eq. 6, PACT), so
two dot products and no per-element temporary (``scale_gradient_sum``). ``clip_backward`` gives
both, in one pass with the fused CPU kernel (``lowbit.quant.native``) where it serves.
"""

from __future__ import annotations

import math

import torch

from lowbit.quant import native


def host_scalars(x: torch.Tensor) -> bool:
    """Whether a quantizer of ``x`` may pass its scale as a Python number: on the CPU outside
    ``torch.compile``, where that selects ATen's fused one-pass kernels (hardtanh and its
    backward) and reading the scale costs nothing. On a GPU it would wait for the device,
    and under ``torch.compile`` it would break the graph; tensor ops fuse there anyway."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def straight_through(
    grad: torch.Tensor,
    x: torch.Tensor,
    low: torch.Tensor | None,
    high: torch.Tensor | None,
    closed: bool = True,
) -> torch.Tensor:
    """``grad`` where ``low <= x <= high`` (``low < x < high`` with ``closed=False``), zero
    elsewhere; a bound of ``None`` is no bound.

    ``low`` / ``high`` are tensors broadcasting against ``x`` (a scalar, or one per channel).
    With scalar bounds and ``host_scalars(x)`` this is one fused pass (hardtanh's backward,
    whose open range becomes the closed one with the bounds moved one step outward in
    ``x``'s dtype); a compare-and-select costs about six passes on the CPU. (The fused pass
    gives ``x = -inf`` or ``+inf`` zero on an unbounded side.)
    """
    if host_scalars(x) and all(b is None or b.numel() == 1 for b in (low, high)):
        return torch.ops.aten.hardtanh_backward(
            grad, x, _host_bound(low, x, -math.inf, closed), _host_bound(high, x, math.inf, closed)
        )
    inside = None
    for bound, above in ((low, True), (high, False)):
        if bound is not None:
            if above:
                side = x >= bound if closed else x > bound
            else:
                side = x <= bound if closed else x < bound
            inside = side if inside is None else inside & side
    return grad if inside is None else torch.where(inside, grad, 0.0)


def _host_bound(
    bound: torch.Tensor | None, x: torch.Tensor, direction: float, closed: bool
) -> float:
    """``bound`` as a Python float in ``x``'s dtype, moved one step towards ``direction``
    when the range is closed (hardtanh's backward excludes its bounds)."""
    if bound is None:
        return direction
    value = bound.detach().reshape(()).to(x.dtype)
    if closed:
        value = torch.nextafter(value, value.new_tensor(direction))
    return float(value)


def scale_gradient_sum(
    grad: torch.Tensor, grad_x: torch.Tensor, x: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """``sum(grad * out) - sum(grad_x * x)``: the scale's gradient times the scale, for
    ``grad_x = straight_through(grad, x, ...)`` (see the module docstring)."""
    flat_g, flat_gx = grad.reshape(-1), grad_x.reshape(-1)
    return flat_g.dot(out.reshape(-1)) - flat_gx.dot(x.reshape(-1))


def clip_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    out: torch.Tensor,
    low: torch.Tensor | None,
    high: torch.Tensor | None,
    closed: bool = True,
    scale: torch.Tensor | None = None,
    scale_gradient: str = "rounding",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The backward of a clipping quantizer whose output is ``out``:
    ``straight_through(grad, x, low, high, closed)`` and, given its scalar ``scale`` s, the
    scale's gradient (else ``None``). Scalar bounds on float32 CPU tensors take one fused pass
    (``native``).

    ``scale_gradient`` says how the output depends on s: ``"rounding"``, the quantizer's
    ``dQ/ds = (Q - x)/s`` inside and ``Q/s`` outside (``scale_gradient_sum(...) / s``); ``"upper"``,
    only through a clip at ``high = s`` (PACT Eq. 3: the gradient of the elements above the
    range); ``"bounds"``, through a clip at ``[-s, s]`` (above minus below)."""
    scalar_bounds = all(b is None or b.numel() == 1 for b in (low, high))
    if scalar_bounds and native.usable(grad, x, out):
        grad_x, (total_out, total_x, above, below) = native.clip_backward(
            grad, x, out, _value(low, -math.inf), _value(high, math.inf), closed
        )
        if scale is None:
            return grad_x, None
        value = {
            "rounding": (total_out - total_x) / float(scale),
            "upper": above,
            "bounds": above - below,
        }[scale_gradient]
        return grad_x, torch.full(scale.shape, value, dtype=scale.dtype)
    grad_x = straight_through(grad, x, low, high, closed)
    if scale is None:
        return grad_x, None
    if scale_gradient == "rounding":
        return grad_x, (scale_gradient_sum(grad, grad_x, x, out) / scale).reshape(scale.shape)
    outside = grad - grad_x  # the gradient of the elements outside the range
    direction = x.sign()
    if scale_gradient == "upper":
        direction.clamp_(min=0)
    return grad_x, outside.mul_(direction).sum().reshape(scale.shape)


def _value(bound: torch.Tensor | None, default: float) -> float:
    return default if bound is None else float(bound)
