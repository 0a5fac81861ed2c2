"""PACT activations (Choi et al. 2018) with DoReFa's rounding, at one bit-width or switchable.

PACT clips at a learned ``alpha`` and rounds ``x / alpha`` to ``2**b - 1`` steps
(AdaBits' activation rounding is DoReFa's original one); ``x`` passes straight through inside
the clipping range and gets zero outside; alpha gets PACT's gradient (1 above alpha, 0 inside)
or, as CoQuant's AdaBits code computes it, ``(Q(x) - x) / alpha`` inside as well
(``alpha_gradient``). Inputs that can be negative are clipped two-sided (``signed``).

With ``bit_widths`` (CoQuant, AdaBits) the quantizer serves every bit-width in the set
(``lowbit.quant.bit_widths``) and keeps one alpha per bit-width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lowbit.errors import LowbitError, require_positive
from lowbit.quant import native
from lowbit.quant.bit_widths import Switchable, nearest_index
from lowbit.quant.hooks import GridView
from lowbit.quant.precision import float32_compute
from lowbit.quant.ste import clip_backward

ALPHA_GRADIENTS = ("pact", "adabits")


def pact_formula(
    x: torch.Tensor, alpha: torch.Tensor, bits: int, signed: bool, alpha_gradient: str
) -> torch.Tensor:
    """``lowbit::pact_quantize`` on every device (see ``pact_quantize``); ``alpha_gradient``
    is for the backward."""
    steps = _steps(bits, signed)
    if signed:
        step = alpha / steps
        return x.div(step).round_().clamp_(-steps, steps).mul_(step)
    return torch.minimum(x.relu(), alpha).mul_(steps / alpha).round_().mul_(alpha / steps)


pact_op = torch.library.custom_op("lowbit::pact_quantize", pact_formula, mutates_args=())


@pact_op.register_fake
def _(x, alpha, bits, signed, alpha_gradient):
    return torch.empty_like(x)


@pact_op.register_kernel("cpu")
def _(x, alpha, bits, signed, alpha_gradient):
    if alpha.numel() != 1 or not native.serves(x):
        return pact_formula(x, alpha, bits, signed, alpha_gradient)
    steps, clip = _steps(bits, signed), float(alpha)
    # A double quotient of two float32 values rounds to their float32 quotient, the formula's
    # alpha / steps and steps / alpha.
    step = clip / steps
    if signed:
        return native.uniform(x, native.ROUND_CLAMP, step, 0.0, -steps, steps)
    return native.uniform(x, native.CLIP_ROUND, step, steps / clip, 0.0, clip)


def _setup_context(ctx, inputs, output):
    x, alpha, _, ctx.signed, ctx.alpha_gradient = inputs
    ctx.save_for_backward(x, output, alpha)


def _backward(ctx, grad_out):
    """Straight-through gradients: ``x`` passes inside the clipping range and gets zero
    outside: ``[0, alpha)`` (PACT Eq. 1's middle piece), ``(-alpha, alpha)`` two-sided.

    The alpha gradient is PACT's (Choi et al. 2018, Eq. 3): ``dQ/dalpha = 1`` for
    ``x >= alpha`` (``-1`` for ``x <= -alpha`` when two-sided), 0 inside, i.e. the upstream
    gradient that the input did not take, signed by ``x``. ``alpha_gradient="adabits"`` gives
    what autograd of AdaBits' ``alpha * round(clip(x) / alpha)`` gives under the STE instead:
    ``(Q(x) - x) / alpha`` inside as well; since ``Q(x) = +-alpha`` outside that is
    ``(sum(g * Q) - sum(g_x * x)) / alpha`` (``lowbit.quant.ste.clip_backward``).
    """
    x, out, alpha = ctx.saved_tensors
    # One-sided: the open range from just below zero is PACT's [0, alpha).
    low = -alpha if ctx.signed else alpha.new_tensor(-torch.finfo(x.dtype).tiny)
    # PACT Eq. 3: +1 above alpha, -1 below -alpha (two-sided), 0 inside.
    pact_rule = "bounds" if ctx.signed else "upper"
    rule = "rounding" if ctx.alpha_gradient == "adabits" else pact_rule
    grad_x, grad_alpha = clip_backward(
        grad_out, x, out, low, alpha, closed=False,
        scale=alpha if ctx.needs_input_grad[1] else None, scale_gradient=rule,
    )
    return grad_x, grad_alpha, None, None, None


pact_op.register_autograd(_backward, setup_context=_setup_context)


def _steps(bits: int, signed: bool) -> int:
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


@float32_compute
def pact_quantize(
    x: torch.Tensor,
    alpha: torch.Tensor,
    bits: int,
    signed: bool = False,
    alpha_gradient: str = "pact",
) -> torch.Tensor:
    """PACT (Choi et al. 2018) with DoReFa's rounding: ``x`` clipped to ``[0, alpha]`` and
    rounded to ``2**bits - 1`` equal steps; ``alpha`` is a positive scalar tensor.

    ``signed=True`` (a layer whose input can be negative): clipped to ``[-alpha, alpha]`` and
    rounded to the step ``alpha / (2**(bits-1) - 1)``, a symmetric grid of ``2**bits - 1``
    levels with zero among them (one code unused, as APoT's signed level sets). Ties round
    half to even. ``alpha_gradient``: ``"pact"`` or ``"adabits"`` (see ``_backward``). One
    operator, ``lowbit::pact_quantize``: one fused pass on float32 CPU tensors
    (``lowbit.quant.native``), ``pact_formula`` elsewhere.
    """
    return pact_op(x, alpha.to(x.dtype), bits, signed, alpha_gradient)


class PACTQuantizer(Switchable):
    """PACT activations with a learned clipping level: one alpha, or one per bit-width.

    ``alpha`` is the initial clipping level (CoQuant Table 2's alpha_init; AdaBits uses 8 for
    convolutions); ``learn_alpha=False`` keeps it fixed (DoReFa's activations are PACT with
    alpha = 1, not learned). Its absolute value is used, as in AdaBits. ``signed`` and
    ``alpha_gradient`` as in ``pact_quantize``.
    """

    def __init__(
        self,
        bits: int,
        alpha: float = 8.0,
        learn_alpha: bool = True,
        bit_widths: Sequence[int] | None = None,
        signed: bool = False,
        alpha_gradient: str = "pact",
    ) -> None:
        super().__init__(bits, bit_widths)
        require_positive(alpha, "alpha")
        if alpha_gradient not in ALPHA_GRADIENTS:
            raise LowbitError(
                f"alpha_gradient must be one of {', '.join(ALPHA_GRADIENTS)}, "
                f"got {alpha_gradient!r}"
            )
        self.signed, self.alpha_gradient = bool(signed), alpha_gradient
        shape = () if self.bit_widths is None else (len(self.bit_widths),)
        self.alpha = nn.Parameter(torch.full(shape, float(alpha)), requires_grad=learn_alpha)

    def current_alpha(self) -> torch.Tensor:
        """The clipping level in use at the current bits."""
        if self.bit_widths is None:
            return self.alpha.abs()
        return self.alpha[nearest_index(self.bit_widths, self.bits)].abs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pact_quantize(
            x, self.current_alpha(), self.bits, self.signed, self.alpha_gradient
        )

    def training_state(self) -> dict[str, torch.Tensor]:
        """Alpha, one per bit-width when switchable (``lowbit.quant.hooks.StateReporter``)."""
        return {"alpha": self.alpha.detach().abs()}

    @torch.no_grad()
    def grid_view(self, x: torch.Tensor) -> GridView:
        """``x / alpha`` on the levels ``k / steps`` at the current bits, ``k`` from 0 (from
        ``-steps`` when signed) to ``steps`` (``lowbit.quant.hooks.GridReporter``)."""
        alpha = self.current_alpha().detach()
        steps = _steps(self.bits, self.signed)
        codes = torch.arange(-steps if self.signed else 0, steps + 1, device=x.device)
        return GridView(x / alpha, codes.to(x.dtype) / steps, alpha)

    def extra_repr(self) -> str:
        switch = f", bit_widths={list(self.bit_widths)}" if self.bit_widths else ""
        kind = "signed" if self.signed else "unsigned"
        return f"bits={self.bits}, {kind}, alpha_gradient={self.alpha_gradient!r}{switch}"
