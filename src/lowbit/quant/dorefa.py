"""DoReFa weights (UniQ Eq. 2) and PACT activations, at one bit-width or switchable among several.

Weights: ``v = tanh(w) / max|tanh(w)|`` lies in ``[-1, 1]``; ``u = (v + 1) / 2`` is rounded
to ``bits`` bits with the straight-through estimator and mapped back, ``2 q - 1``. Three
roundings (``SCHEMES``):

* ``"original"``: DoReFa, ``q = round((2**b - 1) u) / (2**b - 1)`` (UniQ Eq. 2): ``2**b``
  levels from -1 to 1, the ends included.
* ``"modified"``: AdaBits' code, ``q = min(floor(2**b u), 2**b - 1) / 2**b``: ``2**b`` equal
  bins whose left edges are the levels, -1 .. 1 - 2**(1-b); a (b-1)-bit level set is a subset
  of the b-bit one, but the levels are not symmetric about zero.
* ``"centered"``: the same bins with their centres as levels, ``(2k + 1) / 2**b - 1``:
  symmetric about zero, and the (b-1)-bit code of every weight is its b-bit code without the
  last bit (the bins nest across bit-widths). CoQuant's default (see ``docs/coquant.md``).

``rescale`` multiplies the quantized weight by ``std(w) / std(q)`` (AdaBits' "stddev" rescale,
both detached), so the layer keeps the float weight's scale: a float checkpoint initializes it
and a layer without BatchNorm after it (the classifier) gets logits of the usual size.

Activations: PACT clips at a learned ``alpha`` and rounds ``x / alpha`` to ``2**b - 1`` steps
(AdaBits' activation rounding is DoReFa's original one); ``x`` passes straight through inside
the clipping range and gets zero outside; alpha gets PACT's gradient (1 above alpha, 0 inside)
or, as CoQuant's AdaBits code computes it, ``(Q(x) - x) / alpha`` inside as well
(``alpha_gradient``). Inputs that can be negative are clipped two-sided (``signed``).

With ``bit_widths`` (CoQuant, AdaBits) a quantizer serves every bit-width in the set:
``set_bits(b)`` switches it, and the PACT quantizer keeps one alpha per bit-width. A bit-width
outside the set (zero-shot evaluation) uses the alpha of the nearest one in the set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lowbit.errors import LowbitError, require_positive
from lowbit.quant import native
from lowbit.quant.precision import float32_compute
from lowbit.quant.ste import clip_backward, host_scalars

SCHEMES = ("original", "modified", "centered")
MIN_BITS, MAX_BITS = 2, 8
# Keeps the rescale finite when every weight of a layer lands on one level.
MIN_STD = 1e-8


def check_bits(bits: int, what: str = "bits") -> int:
    """``bits`` if it is a whole number in 2..8; a ``LowbitError`` otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise LowbitError(f"{what} must be whole numbers in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return bits


def check_bit_widths(bit_widths: Sequence[int]) -> tuple[int, ...]:
    """The set B as a tuple sorted from the highest bit-width down; empty or bad sets fail."""
    if isinstance(bit_widths, (str, bytes)) or not isinstance(bit_widths, Sequence):
        raise LowbitError(f"the bit-width set must be a list like [8, 6, 4, 2], got {bit_widths!r}")
    if not bit_widths:
        raise LowbitError("the bit-width set is empty; give at least one bit-width, e.g. [8, 4]")
    for bits in bit_widths:
        check_bits(bits, "bit-widths")
    if len(set(bit_widths)) != len(bit_widths):
        raise LowbitError(f"the bit-width set {list(bit_widths)} repeats a bit-width")
    return tuple(sorted(bit_widths, reverse=True))


def nearest_index(bit_widths: Sequence[int], bits: int) -> int:
    """Index in ``bit_widths`` of ``bits``, else of the nearest bit-width (the higher on a tie)."""
    return min(range(len(bit_widths)), key=lambda i: (abs(bit_widths[i] - bits), -bit_widths[i]))


ALPHA_GRADIENTS = ("pact", "adabits")


class _PACT(torch.autograd.Function):
    """PACT's clip and uniform rounding (see ``pact_quantize``) with straight-through
    gradients: ``x`` passes inside the clipping range and gets zero outside: ``[0, alpha)``
    (PACT Eq. 1's middle piece), ``(-alpha, alpha)`` two-sided.

    The alpha gradient is PACT's (Choi et al. 2018, Eq. 3): ``dQ/dalpha = 1`` for
    ``x >= alpha`` (``-1`` for ``x <= -alpha`` when two-sided), 0 inside, i.e. the upstream
    gradient that the input did not take, signed by ``x``. ``alpha_gradient="adabits"`` gives
    what autograd of AdaBits' ``alpha * round(clip(x) / alpha)`` gives under the STE instead:
    ``(Q(x) - x) / alpha`` inside as well; since ``Q(x) = +-alpha`` outside that is
    ``(sum(g * Q) - sum(g_x * x)) / alpha`` (``lowbit.quant.ste.clip_backward``).

    On float32 CPU tensors the forward is one fused pass (``lowbit.quant.native``); otherwise
    on the CPU the clip takes alpha as a Python number (ATen's fused kernels, about six times
    faster there than with a tensor-valued alpha); on a GPU and under ``torch.compile`` alpha
    stays a tensor.
    """

    @staticmethod
    def forward(ctx, x, alpha, bits, signed, alpha_gradient):
        steps = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        scalar = host_scalars(x)
        clip = float(alpha) if scalar else alpha
        step = clip / steps
        if scalar and native.usable(x):  # the same arithmetic in one pass
            if signed:
                out = native.uniform(x, native.ROUND_CLAMP, step, 0.0, -steps, steps)
            else:
                out = native.uniform(x, native.CLIP_ROUND, step, 1.0 / step, 0.0, clip)
        elif signed:
            out = x.div(step).round_().clamp_(-steps, steps).mul_(step)
        elif scalar:
            out = torch.nn.functional.hardtanh(x, 0.0, clip)
            out.mul_(1.0 / step).round_().mul_(step)
        else:
            out = torch.minimum(x.relu(), alpha).mul_(steps / alpha).round_()
            out.mul_(alpha / steps)
        ctx.signed, ctx.alpha_gradient = signed, alpha_gradient
        ctx.save_for_backward(x, out, alpha)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, out, alpha = ctx.saved_tensors
        # One-sided: the open range from just below zero is PACT's [0, alpha).
        low = -alpha if ctx.signed else alpha.new_tensor(-torch.finfo(x.dtype).tiny)
        if ctx.alpha_gradient == "adabits":
            rule = "rounding"
        else:  # PACT Eq. 3: +1 above alpha, -1 below -alpha (two-sided), 0 inside
            rule = "bounds" if ctx.signed else "upper"
        grad_x, grad_alpha = clip_backward(
            grad_out, x, out, low, alpha, closed=False,
            scale=alpha if ctx.needs_input_grad[1] else None, scale_gradient=rule,
        )
        return grad_x, grad_alpha, None, None, None


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
    half to even. ``alpha_gradient``: ``"pact"`` or ``"adabits"`` (see ``_PACT``).
    """
    return _PACT.apply(x, alpha, bits, signed, alpha_gradient)


def _straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    # Forward: the rounded value; backward: identity (DoReFa's straight-through estimator).
    return x + (rounded - x).detach()


@float32_compute
def dorefa_weight_quantize(
    w: torch.Tensor, bits: int, scheme: str = "original", rescale: bool = False
) -> torch.Tensor:
    """DoReFa weight quantization, UniQ Eq. 2 (``scheme="original"``), or AdaBits' roundings.

    Returns ``2 q - 1`` in ``[-1, 1]`` (times ``std(w) / std(q)`` with ``rescale``); gradients
    reach ``w`` through the tanh normalization, straight through the rounding.
    """
    t = torch.tanh(w)
    u = (t / t.abs().max().clamp(min=MIN_STD) + 1) / 2
    if scheme == "original":
        levels = 2**bits - 1
        rounded = torch.round(u.detach() * levels) / levels
    else:
        levels = 2**bits
        code = torch.floor(u.detach() * levels).clamp_(max=levels - 1)
        rounded = (code + 0.5 if scheme == "centered" else code) / levels
    q = 2 * _straight_through(u, rounded) - 1
    if rescale:
        q = q * (w.detach().std() / q.detach().std().clamp(min=MIN_STD))
    return q


class _Switchable(nn.Module):
    """Holds ``bits`` and, when built with ``bit_widths``, switches among them."""

    def __init__(self, bits: int, bit_widths: Sequence[int] | None) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.bit_widths = None if bit_widths is None else check_bit_widths(bit_widths)

    def set_bits(self, bits: int) -> None:
        """Quantize to ``bits`` from now on (any of 2..8; outside ``bit_widths`` = zero-shot)."""
        if self.bit_widths is None:
            raise LowbitError(
                "this quantizer was built for one bit-width; build it with bit_widths=[...] "
                "(adaptive.bits in a config) to switch"
            )
        self.bits = check_bits(bits)


class DoReFaWeightQuantizer(_Switchable):
    """Weights by ``dorefa_weight_quantize``: no parameters, so switching is changing ``bits``."""

    def __init__(
        self,
        bits: int,
        scheme: str = "original",
        rescale: bool = True,
        bit_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__(bits, bit_widths)
        if scheme not in SCHEMES:
            raise LowbitError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        self.scheme, self.rescale = scheme, rescale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantize_at(w, self.bits)

    def quantize_at(self, w: torch.Tensor, bits: int) -> torch.Tensor:
        """``w`` quantized as this quantizer would at ``bits``, whatever its current bits."""
        return dorefa_weight_quantize(w, bits, self.scheme, self.rescale)

    def extra_repr(self) -> str:
        switch = f", bit_widths={list(self.bit_widths)}" if self.bit_widths else ""
        return f"bits={self.bits}, scheme={self.scheme!r}, rescale={self.rescale}{switch}"


class PACTQuantizer(_Switchable):
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

    def extra_repr(self) -> str:
        switch = f", bit_widths={list(self.bit_widths)}" if self.bit_widths else ""
        kind = "signed" if self.signed else "unsigned"
        return f"bits={self.bits}, {kind}, alpha_gradient={self.alpha_gradient!r}{switch}"
