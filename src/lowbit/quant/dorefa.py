"""DoReFa weights (UniQ Eq. 2), at one bit-width or switchable among several.

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

Activations: PACT (``lowbit.quant.pact``). With ``bit_widths`` (CoQuant) a weight quantizer
switches among several bit-widths (``lowbit.quant.bit_widths``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lowbit.errors import LowbitError
from lowbit.quant.bit_widths import Switchable
from lowbit.quant.hooks import GridView
from lowbit.quant.precision import float32_compute

SCHEMES = ("original", "modified", "centered")
# Keeps the rescale finite when every weight of a layer lands on one level.
MIN_STD = 1e-8


def _straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    # Forward: the rounded value; backward: identity (DoReFa's straight-through estimator).
    return x + (rounded - x).detach()


@float32_compute
def dorefa_weight_quantize(
    w: torch.Tensor, bits: int, scheme: str = "original", rescale: bool = False
) -> torch.Tensor:
    """DoReFa weight quantization, UniQ Eq. 2 (``scheme="original"``), or AdaBits' roundings.

    Returns ``2 q - 1`` in ``[-1, 1]`` (times ``std(w) / std(q)`` with ``rescale``); gradients
    reach ``w`` through the tanh normalization, straight through the rounding. A plain tensor
    formula, not a ``lowbit`` operator: it has no fused kernel and autograd of it is the
    paper's gradient, so ``torch.compile`` traces and fuses it.
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


class DoReFaWeightQuantizer(Switchable):
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

    @torch.no_grad()
    def grid_view(self, w: torch.Tensor) -> GridView | None:
        """``tanh(w) / max|tanh(w)|`` on the levels ``2 q - 1`` at the current bits
        (``lowbit.quant.hooks.GridReporter``); ``None`` for the ``"modified"`` scheme, which
        rounds down to its levels rather than to the nearest."""
        if self.scheme == "modified":
            return None
        t = torch.tanh(w)
        codes = torch.arange(2**self.bits, device=w.device, dtype=w.dtype)
        if self.scheme == "original":
            levels = 2 * codes / (2**self.bits - 1) - 1
        else:
            levels = (2 * codes + 1) / 2**self.bits - 1
        return GridView(t / t.abs().max().clamp(min=MIN_STD), levels, w.new_ones(()))

    def extra_repr(self) -> str:
        switch = f", bit_widths={list(self.bit_widths)}" if self.bit_widths else ""
        return f"bits={self.bits}, scheme={self.scheme!r}, rescale={self.rescale}{switch}"


