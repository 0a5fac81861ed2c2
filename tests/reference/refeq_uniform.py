"""UniQ (Pham et al.; seed 003, Eq. 3-6, 9-10) and LSQ (Esser et al., ICLR 2020, §2) in float64.

Nothing here comes from ``lowbit``. Each quantizer is written as its paper prints it, with
``round`` under the straight-through estimator (``c + (r - c).detach()``) and the clip as
the piecewise function whose pieces the paper's gradient cases name, so autograd gives the
paper's gradients. The step enters through LSQ's gradient scale (§2.2):
``s * g + (s - s * g).detach()`` has the value ``s`` and the gradient ``g dL/ds``.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64

# The UniQ authors' unit step sizes Delta^u for N = 2^b levels, b = 1..8 (REFERENCE-FACTS.md;
# UniQ Table 1 prints N = 2..16 to three decimals).
UNIT_STEP_WEIGHT = (1.5958, 0.9957, 0.5860, 0.3352, 0.1881, 0.1041, 0.0569, 0.0308)
UNIT_STEP_ACTIVATION = (1.2240, 0.6508, 0.3534, 0.1932, 0.1055, 0.0573, 0.0309, 0.0165)


def gradient_scale(step: torch.Tensor, g: float) -> torch.Tensor:
    """LSQ §2.2: the step's gradient is multiplied by ``g = 1/sqrt(N Q_P)``; forward value
    unchanged."""
    return step * g + (step - step * g).detach()


def positive_codes(grid: str, bits: int) -> int:
    """``Q_P`` of the gradient scale: ``2^b - 1`` unsigned, ``2^(b-1) - 1`` for LSQ's
    two's-complement grid (§2.1), ``max(2^(b-1) - 1, 1)`` for UniQ's symmetric grid (the UniQ
    authors', REFERENCE-FACTS.md)."""
    if grid == "unsigned":
        return 2**bits - 1
    if grid == "signed":
        return 2 ** (bits - 1) - 1
    return max(2 ** (bits - 1) - 1, 1)


def channel_view(step: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-output-channel step ``(C,)`` broadcast against ``x`` (dim 0 the channel)."""
    return step.reshape(-1, *([1] * (x.dim() - 1))) if step.dim() == 1 else step


def elements_per_step(x: torch.Tensor, step: torch.Tensor) -> int:
    """``N`` of the gradient scale: the elements sharing one step (numel per channel)."""
    return x.numel() // max(step.numel(), 1)


def uniq_weight(x: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """UniQ Eq. 3, ``Q_w(x) = round(clip_N((x + alpha) / Delta)) Delta - alpha``,
    ``alpha = Delta (N - 1) / 2``, ``clip_N(v) = min(max(v, 0), N - 1)``, ``N = 2^b``.

    Gradients (Eq. 6, STE on the round): ``dQ/dDelta = -x/Delta + round(x/Delta - 1/2) + 1/2``
    if ``|x| < alpha``; outside, autograd of Eq. 3 gives ``sign(x) (N - 1) / 2`` (Eq. 6 prints
    ``sign(x) alpha``, a length where a pure number belongs: ``alpha`` itself scales with
    ``Delta``). ``dQ/dx = 1`` for ``|x| < alpha``, else 0. Ties (``x / Delta`` an integer)
    round away from zero, so ``Q(-x) = -Q(x)`` holds exactly (the sign-magnitude rule
    ``lowbit.quant.uniq`` documents); Eq. 3 itself does not say.
    """
    n_levels = 2**bits
    delta = channel_view(step, x)
    half = (n_levels - 1) / 2
    alpha = delta * half
    v = (x + alpha) / delta
    inside = x.detach().abs() < alpha.detach()  # Eq. 6's |x| < alpha
    c = torch.where(inside, v, torch.where(x.detach() > 0, n_levels - 1.0, 0.0).to(x.dtype))
    cd = c.detach()
    r = torch.where(torch.signbit(x.detach()), torch.ceil(cd - 0.5), torch.floor(cd + 0.5))
    return (c + (r - c).detach()) * delta - alpha


def uniq_activation(x: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """UniQ Eq. 5, ``Q_a(x) = round(clip_N(x / Delta)) Delta``; its step gradient is found
    "similarly" to Eq. 6: ``round(x/Delta) - x/Delta`` for ``0 < x/Delta < N - 1``, the
    clipped code (``N - 1`` above, 0 below) outside. Ties round half to even (the rule
    ``lowbit.quant.uniq`` documents)."""
    return _clipped_round(x, channel_view(step, x), 0.0, 2.0**bits - 1)


def lsq(x: torch.Tensor, step: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """LSQ §2.1 Eq. 1-2: ``v_hat = round(clip(v / s, -Q_N, Q_P)) s`` with
    ``Q_N = 2^(b-1)``, ``Q_P = 2^(b-1) - 1`` (signed, two's complement) or ``Q_N = 0``,
    ``Q_P = 2^b - 1`` (unsigned); Eq. 3:
    ``dv_hat/ds = -v/s + round(v/s)`` if ``-Q_N < v/s < Q_P``, ``-Q_N`` if ``v/s <= -Q_N``,
    ``Q_P`` if ``v/s >= Q_P``; ``v`` passes straight through on the same inside range.
    Ties round half to even."""
    q_n, q_p = (2.0 ** (bits - 1), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0**bits - 1)
    return _clipped_round(x, channel_view(step, x), -q_n, q_p)


def _clipped_round(x, step, low, high):
    v = x / step
    vd = v.detach()
    inside = (vd > low) & (vd < high)
    c = torch.where(inside, v, torch.where(vd >= high, high, low).to(x.dtype))
    r = torch.round(c.detach())
    return (c + (r - c).detach()) * step


def clip_bounds(grid: str, bits: int) -> tuple[float, float]:
    """The clipping range in units of the step: ``[-(N-1)/2, (N-1)/2]`` (UniQ weights),
    ``[-Q_N, Q_P]`` (LSQ), ``[0, 2^b - 1]`` (activations)."""
    if grid == "symmetric":
        return -(2**bits - 1) / 2, (2**bits - 1) / 2
    if grid == "signed":
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def uniform_margin(x: torch.Tensor, step: torch.Tensor, grid: str, bits: int):
    """Distance of ``x / step`` to the nearest rounding boundary or clipping bound (units of
    the step): boundaries are the integers on the symmetric grid (half-integer codes), the
    half-integers otherwise."""
    v = (x.detach().double() / channel_view(step.double(), x)).reshape(-1)
    offset = 0.0 if grid == "symmetric" else 0.5
    frac = v - offset
    rounding = (frac - torch.round(frac)).abs()
    low, high = clip_bounds(grid, bits)
    return torch.minimum(rounding, torch.minimum((v - low).abs(), (v - high).abs()))


def mse_weight_step(x: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """UniQ Eq. 9: ``Delta*_w = Delta^u_w Std(X)``, population std, per output channel when
    kernel-wise."""
    flat = x.double().reshape(x.shape[0], -1) if per_channel else x.double().reshape(1, -1)
    std = flat.std(dim=1, correction=0)
    step = UNIT_STEP_WEIGHT[bits - 1] * std
    return step if per_channel else step.reshape(())


def mse_activation_step(x: torch.Tensor, bits: int) -> torch.Tensor:
    """UniQ Eq. 10: ``Delta*_a = Delta^u_a sqrt(2 E[X^2])``."""
    return UNIT_STEP_ACTIVATION[bits - 1] * (2 * x.double().square().mean()).sqrt()


def lsq_initial_step(x: torch.Tensor, q_p: int) -> torch.Tensor:
    """LSQ §2.1: ``s = 2 <|v|> / sqrt(Q_P)``."""
    return 2 * x.double().abs().mean() / math.sqrt(q_p)
