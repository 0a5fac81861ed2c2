"""The straight-through gradients that every clipping quantizer shares, in few passes.

A quantizer ``Q(x) = s * clip(round(x / s))`` (RCF, LSQ / UniQ, PACT) hands its input the
upstream gradient inside the clipping range and zero outside (``straight_through``); its
scale ``s`` (alpha, the step) gets ``(sum(g * Q) - sum(g_x * x)) / s`` whenever ``dQ/ds`` is
``(Q - x) / s`` inside the range and ``Q / s`` outside it (APoT Eq. 8, UniQ Eq. 6, PACT), so
two dot products and no per-element temporary (``scale_gradient_sum``). ``clip_backward`` gives
both: the operator ``lowbit::clip_backward``, whose formula is ``clip_backward_formula`` and
whose CPU implementation is one pass of the fused kernel (``lowbit.quant.native``) where that
serves.
"""

from __future__ import annotations

import math

import torch

from lowbit.quant import native


def straight_through(
    grad: torch.Tensor,
    x: torch.Tensor,
    low: torch.Tensor | None,
    high: torch.Tensor | None,
    closed: bool = True,
) -> torch.Tensor:
    """``grad`` where ``low <= x <= high`` (``low < x < high`` with ``closed=False``), zero
    elsewhere, as a new tensor; a bound of ``None`` is no bound.

    ``low`` / ``high`` are tensors broadcasting against ``x`` (a scalar, or one per channel).
    """
    inside = None
    for bound, above in ((low, True), (high, False)):
        if bound is not None:
            if above:
                side = x >= bound if closed else x > bound
            else:
                side = x <= bound if closed else x < bound
            inside = side if inside is None else inside & side
    # Copied even without bounds: an operator's output never aliases its inputs.
    return grad.clone() if inside is None else torch.where(inside, grad, 0.0)


def scale_gradient_sum(
    grad: torch.Tensor, grad_x: torch.Tensor, x: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """``sum(grad * out) - sum(grad_x * x)``: the scale's gradient times the scale, for
    ``grad_x = straight_through(grad, x, ...)`` (see the module docstring)."""
    flat_g, flat_gx = grad.reshape(-1), grad_x.reshape(-1)
    return flat_g.dot(out.reshape(-1)) - flat_gx.dot(x.reshape(-1))


def clip_backward_formula(
    grad: torch.Tensor,
    x: torch.Tensor,
    out: torch.Tensor,
    low: torch.Tensor | None,
    high: torch.Tensor | None,
    closed: bool,
    scale: torch.Tensor | None,
    scale_gradient: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lowbit::clip_backward`` on every device: ``straight_through(grad, x, low, high,
    closed)`` and the gradient of ``scale`` (empty without one; see ``clip_backward``), per
    channel when ``scale`` is."""
    grad_x = straight_through(grad, x, low, high, closed)
    if scale is None:
        return grad_x, grad_x.new_empty(0)
    if scale_gradient == "rounding":
        if scale.numel() == 1:
            total = scale_gradient_sum(grad, grad_x, x, out)
        else:
            total = (grad * out - grad_x * x).sum_to_size(scale.shape)
        return grad_x, (total / scale).reshape(scale.shape)
    outside = grad - grad_x  # the gradient of the elements outside the range
    direction = x.sign()
    if scale_gradient == "upper":
        direction.clamp_(min=0)
    return grad_x, outside.mul_(direction).sum_to_size(scale.shape).reshape(scale.shape)


clip_backward_op = torch.library.custom_op(
    "lowbit::clip_backward", clip_backward_formula, mutates_args=()
)


@clip_backward_op.register_fake
def _(grad, x, out, low, high, closed, scale, scale_gradient):
    return torch.empty_like(x), x.new_empty(0) if scale is None else scale.new_empty(scale.shape)


@clip_backward_op.register_kernel("cpu")
def _(grad, x, out, low, high, closed, scale, scale_gradient):
    scalars = all(t is None or t.numel() == 1 for t in (low, high, scale))
    if not (scalars and native.serves(grad, x, out)):
        return clip_backward_formula(grad, x, out, low, high, closed, scale, scale_gradient)
    grad_x, (total_out, total_x, above, below) = native.clip_backward(
        grad, x, out, _value(low, -math.inf), _value(high, math.inf), closed
    )
    if scale is None:
        return grad_x, grad_x.new_empty(0)
    value = {
        "rounding": (total_out - total_x) / float(scale),
        "upper": above,
        "bounds": above - below,
    }[scale_gradient]
    return grad_x, torch.full(scale.shape, value, dtype=scale.dtype)


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
    ``straight_through(grad, x, low, high, closed)`` and, given its ``scale`` s (a scalar or
    one per channel, in ``x``'s dtype), the scale's gradient (else ``None``). Scalar bounds on
    float32 CPU tensors take one fused pass (``native``).

    ``scale_gradient`` says how the output depends on s: ``"rounding"``, the quantizer's
    ``dQ/ds = (Q - x)/s`` inside and ``Q/s`` outside (``scale_gradient_sum(...) / s``); ``"upper"``,
    only through a clip at ``high = s`` (PACT Eq. 3: the gradient of the elements above the
    range); ``"bounds"``, through a clip at ``[-s, s]`` (above minus below)."""
    grad_x, grad_scale = clip_backward_op(
        grad, x, out, low, high, closed, scale, scale_gradient
    )
    return grad_x, None if scale is None else grad_scale


def _value(bound: torch.Tensor | None, default: float) -> float:
    return default if bound is None else float(bound)
