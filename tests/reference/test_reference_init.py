"""Initial step sizes set by calibration (``observe``): UniQ Eq. 9-10 with the UniQ authors'
unit steps, and LSQ's ``2 <|v|> / sqrt(Q_P)``.

The unit steps come from REFERENCE-FACTS.md (the authors' table, four decimals), so the
comparison allows half a unit of their last digit.
"""

from __future__ import annotations

import pytest
import torch
from refeq_battery import generator_for, quantizer_for
from refeq_uniform import (
    UNIT_STEP_ACTIVATION,
    UNIT_STEP_WEIGHT,
    lsq_initial_step,
    mse_activation_step,
    mse_weight_step,
    positive_codes,
)

import lowbit


def bit_range(name: str) -> list[int]:
    if name not in lowbit.available_methods():
        return []
    method = lowbit.get_method(name)
    return list(range(method.min_bits, method.max_bits + 1))


def table_tolerance(unit_step: float) -> float:
    """Relative error allowed by a unit step printed to four decimals."""
    return 0.5e-4 / unit_step + 1e-6


def batches(shape, count, generator, positive=False):
    out = []
    for i in range(count):
        x = torch.randn(shape, generator=generator) * (0.5 + 0.25 * i)
        out.append(x.relu() if positive else x)
    return out


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("bits", bit_range("uniq"))
def test_uniq_weight_step_is_eq9(bits, per_channel):
    """UniQ Eq. 9: ``Delta*_w = Delta^u_w Std(W)`` (kernel-wise: per output channel)."""
    q = lowbit.get_method("uniq").weight_quantizer(bits, per_channel=per_channel)
    (w,) = batches((6, 5, 2, 4), 1, generator_for("uniq-init", bits, per_channel))
    q.observe(w)
    want = mse_weight_step(w, bits, per_channel)
    rtol = table_tolerance(UNIT_STEP_WEIGHT[bits - 1])
    torch.testing.assert_close(q.step.detach().double(), want, rtol=rtol, atol=0)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("bits", bit_range("uniq"))
def test_uniq_input_step_is_eq10_max_over_batches(bits, signed):
    """UniQ §4.2: the per-batch estimate, its maximum over the calibration batches. Unsigned
    inputs: Eq. 10, ``Delta^u_a sqrt(2 E[X^2])``; signed inputs (the spec): the weights' rule,
    Eq. 9 applied to the input, ``Delta^u_w Std(X)``."""
    q = lowbit.get_method("uniq").input_quantizer(bits, signed=signed)
    xs = batches((8, 30), 3, generator_for("uniq-init-in", bits, signed), positive=not signed)
    for x in xs:
        q.observe(x)
    if signed:
        want = torch.stack([mse_weight_step(x, bits, False) for x in xs]).max()
        unit = UNIT_STEP_WEIGHT[bits - 1]
    else:
        want = torch.stack([mse_activation_step(x, bits) for x in xs]).max()
        unit = UNIT_STEP_ACTIVATION[bits - 1]
    torch.testing.assert_close(
        q.step.detach().double(), want, rtol=table_tolerance(unit), atol=0
    )


@pytest.mark.parametrize("role", ["weight", "unsigned input", "signed input"])
@pytest.mark.parametrize("bits", bit_range("lsq"))
def test_lsq_initial_step(bits, role):
    """LSQ §2.1: ``s = 2 <|v|> / sqrt(Q_P)`` (``Q_P = 2^b - 1`` unsigned, ``2^(b-1) - 1``
    signed) from the first tensor observed."""
    q, signed = quantizer_for("lsq", bits, role)
    (x,) = batches((8, 30), 1, generator_for("lsq-init", bits, role), positive=not signed)
    q.observe(x)
    want = lsq_initial_step(x, positive_codes("signed" if signed else "unsigned", bits))
    torch.testing.assert_close(q.step.detach().double(), want, rtol=1e-6, atol=0)
