"""A network trained at several bit-widths (CoQuant, ``adaptive.bits``) deploys at one.

Its quantizers switch bit-widths and every BatchNorm is a ``SwitchableBatchNorm`` holding one
BatchNorm per bit-width (``lowbit.adaptive.switchable``). A deployed network runs at one of
them: ``single_bit_width`` sets the quantizers there and keeps that bit-width's BatchNorms as
plain ones, which is the float architecture the deploy runtime and the ONNX export rebuild.
"""

from __future__ import annotations

import copy

from torch import nn

from lowbit.adaptive.switchable import SwitchableBatchNorm, set_bits, switchable_modules
from lowbit.errors import LowbitError
from lowbit.nn.quantize import set_submodule


def single_bit_width(model: nn.Module, bits: int | None) -> nn.Module:
    """``model`` ready to export: a copy at ``bits``, one of the bit-widths it was trained at,
    with that bit-width's BatchNorms as plain ones, for a network holding
    ``SwitchableBatchNorm`` layers; ``model`` itself otherwise (a network with one bit-width,
    or one this function already fixed), where ``bits`` must be ``None`` or the bit-width it
    runs at. A bit-width outside the trained set would need BatchNorm recalibration first
    (``lowbit eval --bits``), so it is refused."""
    norms = [(name, m) for name, m in model.named_modules() if isinstance(m, SwitchableBatchNorm)]
    if not norms:
        running = {module.bits for module in switchable_modules(model)}
        if bits is not None and running != {bits}:
            raise LowbitError(
                "bits (--bits) picks one bit-width of a network trained at several "
                "(adaptive.bits); this one runs at a single bit-width: drop it"
            )
        return model
    widths = ", ".join(map(str, norms[0][1].bit_widths))
    if bits is None:
        raise LowbitError(
            f"this network switches among {widths} bits; export one of them: --bits B "
            "(Python: bits=B)"
        )
    if bits not in norms[0][1].bit_widths:
        raise LowbitError(
            f"this network was trained at {widths} bits, not {bits}; export one of those"
        )
    fixed = set_bits(copy.deepcopy(model), bits)
    for name, _ in norms:
        set_submodule(fixed, name, fixed.get_submodule(name).active)
    return fixed
