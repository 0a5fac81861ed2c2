"""Reparameterized clipping function (APoT Eq. 7-8) and weight normalization (Eq. 9), with the
ablations of APoT Table 3 and App. A: PACT's clipping gradient (Eq. 11) and no clipping at all
(alpha = max|W|)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowbit.errors import LowbitError, require_positive
from lowbit.quant import native
from lowbit.quant.hooks import GridView
from lowbit.quant.levels import levels as make_levels
from lowbit.quant.precision import float32_compute
from lowbit.quant.project import (
    grid_cells,
    grid_position,
    grid_table,
    in_memory_order,
    midpoints,
    project_by_search,
    project_on_grid,
)
from lowbit.quant.ste import clip_backward


def rcf_formula(
    x: torch.Tensor,
    alpha: torch.Tensor,
    levels: torch.Tensor,
    table: torch.Tensor | None,
    signed: bool,
    divide_first: bool,
    clip_input_gradient: bool,
    alpha_gradient: str = "rcf",
) -> torch.Tensor:
    """``lowbit::rcf_quantize`` on every device (see ``rcf_quantize``): ``x`` projected
    straight onto ``alpha * levels`` (the grid or the boundaries are scaled instead of the
    tensor), or with ``divide_first`` as ``project_divided``; ``clip_input_gradient`` and
    ``alpha_gradient`` are for the backward."""
    if divide_first:
        return project_divided(x, alpha, levels, signed)
    if table is not None:
        return project_on_grid(x, table * alpha, _lowest(signed), 1.0, alpha)
    return project_by_search(x, levels * alpha, midpoints(levels) * alpha)


rcf_op = torch.library.custom_op("lowbit::rcf_quantize", rcf_formula, mutates_args=())


@rcf_op.register_fake
def _(x, alpha, levels, table, signed, divide_first, clip_input_gradient, alpha_gradient="rcf"):
    return torch.empty_like(x)


@rcf_op.register_kernel("cpu")
def _(x, alpha, levels, table, signed, divide_first, clip_input_gradient, alpha_gradient="rcf"):
    lookup = levels if table is None else table
    if divide_first or lookup.dtype != x.dtype or not native.serves(x):
        return rcf_formula(x, alpha, levels, table, signed, divide_first, clip_input_gradient)
    if table is None:
        return native.search_lookup(x, levels * alpha, midpoints(levels) * alpha)
    multiplier, offset = grid_position(table, _lowest(signed), 1.0, alpha)
    return native.grid_lookup(x, table * alpha, float(multiplier), offset)


def _lowest(signed: bool) -> float:
    return -1.0 if signed else 0.0


def _setup_context(ctx, inputs, output):
    x, alpha, _, _, ctx.signed, _, ctx.clip_input_gradient, *rest = inputs
    ctx.alpha_gradient = rest[0] if rest else "rcf"
    ctx.save_for_backward(x, output, alpha)


# How the output depends on alpha, as ``lowbit.quant.ste.clip_backward`` names it: RCF's
# rescaled projection (Eq. 8), or PACT's clip alone (Eq. 11; ``[-alpha, alpha]`` for signed data,
# from above only for unsigned).
ALPHA_GRADIENTS = ("rcf", "pact")


def _scale_gradient(alpha_gradient: str, signed: bool) -> str:
    if alpha_gradient == "rcf":
        return "rounding"
    return "bounds" if signed else "upper"


def _backward(ctx, grad_out):
    """APoT Eq. 8 (``alpha_gradient="rcf"``). For alpha: ``Pi(x/alpha) - x/alpha`` inside the
    clipping range and ``sign(x)`` outside. Outside the range ``Pi(x/alpha) = sign(x)``, so the
    alpha gradient is ``(sum(g * out) - sum(g_x * x)) / alpha`` with ``g_x`` the clipped
    straight-through gradient: two dot products, no extra tensor (``lowbit.quant.ste``). With
    ``alpha_gradient="pact"`` alpha gets APoT Eq. 11 instead (PACT): ``sign(x)`` outside the
    range and nothing from inside it. For ``x``: straight-through inside the range and zero
    outside (Eq. 8, activations), or with ``clip_input_gradient=False`` the identity
    everywhere (APoT §2.5 for weights, "dW_hat / dW_tilde = 1"; the authors' code does not
    clip it either).
    """
    x, out, alpha = ctx.saved_tensors
    grad_x, grad_alpha = clip_backward(
        grad_out, x, out, -alpha if ctx.signed else None, alpha,
        scale=alpha if ctx.needs_input_grad[1] else None,
        scale_gradient=_scale_gradient(ctx.alpha_gradient, ctx.signed),
    )
    if not ctx.clip_input_gradient:
        grad_x = grad_out
    return grad_x, grad_alpha, None, None, None, None, None, None


rcf_op.register_autograd(_backward, setup_context=_setup_context)


def nearest_level(u: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The nearest of the sorted ``levels`` to each element of ``u``, decided as an argmin of
    ``|u - level|`` decides it: by the two distances rounded to ``u``'s dtype, which can differ
    from a comparison with the rounded midpoint when a level (1/6, 1/48) is not a float. A tie
    goes to the lower level."""
    return in_memory_order(_nearest_level, u, levels)


def _nearest_level(u: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    below = torch.bucketize(u, levels, out_int32=True, right=True).sub_(1)
    below = below.clamp_(0, levels.numel() - 2)
    lower, upper = levels.index_select(0, below), levels.index_select(0, below + 1)
    return torch.where(upper - u < u - lower, upper, lower)


def project_divided(
    x: torch.Tensor, alpha: torch.Tensor, levels: torch.Tensor, signed: bool
) -> torch.Tensor:
    """``alpha * Pi(clip(x / alpha))`` in Eq. 7's written order: divide by alpha, take the
    nearest unit level (signed data by magnitude, sign kept), multiply by alpha.

    It rounds as the APoT authors' code does, so their checkpoints' forward pass is reproduced
    bitwise; a value exactly half-way between two levels goes to the one nearer zero (their
    2-bit weights' round-half-to-even). Values beyond the range go to the end levels.
    """
    u = x / alpha
    if signed:
        return nearest_level(u.abs(), levels[levels >= 0]) * u.sign() * alpha
    return nearest_level(u, levels) * alpha


@float32_compute
def rcf_quantize(
    x: torch.Tensor,
    alpha: torch.Tensor,
    levels: torch.Tensor,
    signed: bool = True,
    table: torch.Tensor | None = None,
    divide_first: bool = False,
    clip_input_gradient: bool = True,
    alpha_gradient: str = "rcf",
) -> torch.Tensor:
    """APoT Eq. 7: ``alpha * Pi_Q(1,b)(clip(x / alpha, 1))`` with the Eq. 8 gradient
    (``alpha_gradient="pact"``: Eq. 11's, one of ``ALPHA_GRADIENTS``).

    ``levels`` is a sorted set normalized to a maximum of 1 (``lowbit.levels``), ``alpha`` a
    scalar tensor, ``table`` the optional ``grid_table`` of the levels (faster projection).
    Signed data are clipped to [-alpha, alpha]; unsigned data (activations) only from above:
    values below zero project to the zero level. ``divide_first`` computes it as
    ``project_divided`` (the authors' rounding) instead of on scaled levels (fewer passes).
    ``clip_input_gradient=False`` passes the gradient to ``x`` unclipped (weights, §2.5).

    One operator, ``lowbit::rcf_quantize`` (``_backward``): on float32 CPU tensors the
    projection on scaled levels is one fused pass (``lowbit.quant.native``), elsewhere
    ``rcf_formula``.
    """
    if alpha_gradient not in ALPHA_GRADIENTS:
        raise LowbitError(
            f"unknown alpha gradient {alpha_gradient!r}; use one of: {', '.join(ALPHA_GRADIENTS)}"
        )
    dtype = x.dtype
    table = None if table is None else table.to(dtype)
    return rcf_op(
        x, alpha.to(dtype), levels.to(dtype), table, signed, divide_first, clip_input_gradient,
        alpha_gradient,
    )


def weight_statistics(
    w: torch.Tensor, eps: float = 1e-5, correction: int = 0, detach_stats: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and the divisor ``std + eps`` of APoT Eq. 9 over the whole layer (population
    std by default; ``correction`` is the std's Bessel correction). By default gradients flow
    through both (Algorithm 1, step 8); ``detach_stats`` treats them as constants."""
    stats = w.detach() if detach_stats else w
    return stats.mean(), stats.std(correction=correction) + eps


def normalize_weight(
    w: torch.Tensor, eps: float = 1e-5, correction: int = 0, detach_stats: bool = False
) -> torch.Tensor:
    """APoT Eq. 9: ``(W - mean) / (std + eps)`` (see ``weight_statistics`` and
    ``WEIGHT_NORMALIZATIONS``)."""
    mean, divisor = weight_statistics(w, eps, correction, detach_stats)
    return (w - mean) / divisor


# Eq. 9 as the paper states it, and as the APoT authors' code computes it (mean and std read
# from the weight's data, unbiased std, no epsilon), which their checkpoints were trained with.
WEIGHT_NORMALIZATIONS: dict[str, dict[str, Any]] = {
    "eq9": {},
    "detached": {"eps": 0.0, "correction": 1, "detach_stats": True},
}

# How alpha is set (APoT Table 3, App. A): learned with RCF's gradient (Eq. 8), learned with
# PACT's (Eq. 11: only the clipped values pull on it), or not learned at all: alpha = max|x|
# at every call, so nothing is clipped (Table 3's "RCF ✗" column, "alpha = max|W|").
CLIPPINGS = ("rcf", "pact", "max")


class RCFQuantizer(nn.Module):
    """A learnable clipping threshold alpha on a fixed level set (APoT §2.3-2.4).

    With ``level_set="apot"`` this is APoT; ``"pot"`` and ``"uniform"`` give the ablation rows
    of APoT Table 3 with the same RCF and weight normalization. ``normalization`` picks the
    Eq. 9 variant (a key of ``WEIGHT_NORMALIZATIONS``) when ``normalize`` is set;
    ``divide_first`` rounds as the authors' code (``project_divided``). The level set
    is a non-persistent buffer, so a state dict holds only alpha and loads across bit-widths
    (progressive initialization).

    ``rescale`` (with ``normalize``) multiplies the output by Eq. 9's ``std + eps``:
    ``W_hat = (std + eps) * alpha * Pi(clip(W_tilde / alpha))``, so the layer keeps the float
    weight's scale and a pretrained model computes what it computed before quantization, up to
    the quantization error and the removed mean. The paper feeds ``alpha * Pi(...)`` to the
    convolution and lets the BatchNorm after it absorb the scale; a BatchNorm in training mode
    is invariant to a positive factor on its input, so there the loss and every gradient are
    the same either way (up to BN's eps), while a layer without BatchNorm after it (a
    classifier, a transformer's projections) would otherwise change its output by
    ``1 / std``. ``rescale=False`` is the paper's literal output, which the APoT authors'
    checkpoints need (their BatchNorm statistics were collected on it).

    ``clip_input_gradient=False`` gives ``x`` the identity gradient (APoT §2.5, weights);
    inputs keep Eq. 8's clipped straight-through.

    ``clipping`` (one of ``CLIPPINGS``) says how alpha is set: ``"rcf"`` (Eq. 8), ``"pact"``
    (alpha learned with PACT's gradient, Eq. 11) or ``"max"`` (no parameter: alpha is the
    largest magnitude of what the quantizer sees, read at every call, APoT Table 3 "RCF ✗").
    """

    def __init__(
        self,
        level_set: str,
        bits: int,
        signed: bool,
        alpha: float,
        normalize: bool = False,
        normalization: str = "eq9",
        divide_first: bool = False,
        rescale: bool = True,
        clip_input_gradient: bool = True,
        clipping: str = "rcf",
    ) -> None:
        super().__init__()
        require_positive(alpha, "alpha")
        if normalization not in WEIGHT_NORMALIZATIONS:
            raise LowbitError(
                f"unknown weight normalization {normalization!r}; use one of: "
                f"{', '.join(WEIGHT_NORMALIZATIONS)}"
            )
        if clipping not in CLIPPINGS:
            raise LowbitError(f"unknown clipping {clipping!r}; use one of: {', '.join(CLIPPINGS)}")
        self.level_set, self.bits, self.signed, self.normalize = level_set, bits, signed, normalize
        self.normalization, self.divide_first = normalization, divide_first
        self.rescale, self.clip_input_gradient = rescale, clip_input_gradient
        self.clipping = clipping
        grid = make_levels(level_set, bits, signed)
        cells = grid_cells(grid)
        self.register_buffer("levels", grid.float(), persistent=False)
        table = None if cells is None else grid_table(grid, cells).float()
        self.register_buffer("table", table, persistent=False)
        if clipping == "max":
            self.register_parameter("alpha", None)
        else:
            self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def normalized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(what is clipped and projected, Eq. 9's divisor)``: ``x`` normalized by Eq. 9
        when the quantizer normalizes, else ``(x, None)``."""
        if not self.normalize:
            return x, None
        mean, divisor = weight_statistics(x, **WEIGHT_NORMALIZATIONS[self.normalization])
        return (x - mean) / divisor, divisor

    def threshold(self, x: torch.Tensor) -> torch.Tensor:
        """Alpha for ``x`` (already normalized): the learned parameter, or with
        ``clipping="max"`` the largest magnitude of ``x`` (largest value, unsigned), a
        constant to autograd."""
        if self.alpha is not None:
            return self.alpha
        top = x.detach().abs().amax() if self.signed else x.detach().amax()
        return top.clamp(min=torch.finfo(top.dtype).tiny)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, divisor = self.normalized(x)
        out = rcf_quantize(
            x, self.threshold(x), self.levels, self.signed, self.table, self.divide_first,
            self.clip_input_gradient, "pact" if self.clipping == "pact" else "rcf",
        )
        return out * divisor if divisor is not None and self.rescale else out

    def output_scale(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """What multiplies ``levels`` in the output: alpha, times Eq. 9's ``std + eps`` of the
        weight ``w`` when the output is rescaled (alpha itself read from ``w`` with
        ``clipping="max"``)."""
        rescaled = self.normalize and self.rescale
        if self.alpha is not None and not rescaled:
            return self.alpha.detach()
        if w is None:
            raise LowbitError(
                "a rescaled or max-clipped weight quantizer's scale depends on the weight"
            )
        x, divisor = self.normalized(w.detach())
        alpha = self.threshold(x).detach()
        return alpha * divisor.to(alpha) if rescaled else alpha

    def training_state(self) -> dict[str, torch.Tensor]:
        """Alpha (``lowbit.quant.hooks.StateReporter``); none when it is read from the data
        (``clipping="max"``)."""
        return {} if self.alpha is None else {"alpha": self.alpha.detach()}

    @torch.no_grad()
    def grid_view(self, x: torch.Tensor) -> GridView:
        """``x`` (normalized by Eq. 9 when the quantizer normalizes) in units of alpha, on the
        normalized levels (``lowbit.quant.hooks.GridReporter``)."""
        x, _ = self.normalized(x)
        alpha = self.threshold(x).detach()
        return GridView(x / alpha, self.levels, alpha)

    def extra_repr(self) -> str:
        kind = "signed" if self.signed else "unsigned"
        norm = f", weight_norm={self.normalization}" if self.normalize else ""
        norm += ", rescale" if self.normalize and self.rescale else ""
        order = ", divide_first" if self.divide_first else ""
        clipping = f", clipping={self.clipping}" if self.clipping != "rcf" else ""
        return f"{self.level_set}, bits={self.bits}, {kind}{norm}{order}{clipping}"
