"""Step-size initialization: UniQ's MSE-optimal step sizes (§4.2, Table 1), LSQ's heuristic,
and the signal-to-quantization-noise ratio (SQNR) UniQ uses to read training dynamics (Fig. 4).

The unit step sizes are solved here, in float64, from the Gaussian integrals (no tables):

* ``kind="weight"``: the symmetric quantizer of UniQ Eq. 3 (levels ``(k - (N-1)/2) * step``,
  ``k = 0..N-1``) on a unit Gaussian.
* ``kind="activation"``: the unsigned quantizer of Eq. 5 (levels ``k * step``) on a unit
  Gaussian pre-activation after ReLU, integrating only its continuous part ``x > 0``. The
  discrete part (the zeros) is reconstructed exactly by the zero level whatever the step, so
  this is also the MSE-optimal step for the whole rectified Gaussian.

SQNR convention (it reproduces every SQNR of UniQ Table 1 to the printed 0.1 dB): signal power
is the *variance* of the quantizer input and noise power its mean squared quantization error,
``10 log10(Var[X] / E[(X - Q(X))^2])``. For weights ``Var[X] = 1``; for activations X is the
rectified unit Gaussian, ``Var[X] = 1/2 - 1/(2 pi)``, and its error is the continuous-part
integral above (taking ``E[X^2] = 1/2`` as the signal instead gives 7.2 dB at N = 2, not 5.5).
"""

from __future__ import annotations

import functools
import math

import torch

from lowbit.errors import LowbitError

MIN_LEVELS, MAX_LEVELS = 2, 256
KINDS = ("weight", "activation")
# Variance of the unit-Gaussian weight and of the rectified unit-Gaussian activation.
SIGNAL_VARIANCE = {"weight": 1.0, "activation": 0.5 - 1.0 / (2.0 * math.pi)}
# The step sizes solved for N <= 256 lie in [1e-3, 2]; the bracket is generous on both sides.
_BRACKET = (1e-6, 10.0)


def _check(n_levels: int, kind: str) -> None:
    if kind not in KINDS:
        raise LowbitError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(n_levels, bool) or not isinstance(n_levels, int):
        raise LowbitError(f"n_levels must be a whole number, got {n_levels!r}")
    if not MIN_LEVELS <= n_levels <= MAX_LEVELS:
        raise LowbitError(f"n_levels must be in {MIN_LEVELS}..{MAX_LEVELS}, got {n_levels}")


def _cells(step: float, n_levels: int, kind: str):
    """Reconstruction levels and the lower / upper ends of their cells (float64), restricted
    to the density's support: the whole line for weights, ``x > 0`` for activations."""
    k = torch.arange(n_levels, dtype=torch.float64)
    levels = (k - (n_levels - 1) / 2) * step if kind == "weight" else k * step
    lower = levels - step / 2
    upper = levels + step / 2
    lower[0] = -math.inf if kind == "weight" else 0.0
    upper[-1] = math.inf
    return levels, lower, upper


def _pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def _x_pdf(x: torch.Tensor) -> torch.Tensor:
    # x * pdf(x) tends to 0 at +-inf, where the product itself would be inf * 0 = nan.
    return torch.where(x.isinf(), 0.0, x * _pdf(x))


def distortion(step: float, n_levels: int, kind: str) -> float:
    """UniQ Eq. 7's ``D(step) = E[(X - Q(X; step))^2]`` for a unit Gaussian (weights) or the
    continuous part of a ReLU'd unit Gaussian (activations), in closed form:
    ``int_a^b (x-c)^2 pdf = [(1 + c^2) cdf(x) - (x - 2c) pdf(x)]_a^b``."""
    c, a, b = _cells(step, n_levels, kind)
    cdf = torch.special.ndtr

    def antiderivative(x):
        return (1 + c * c) * cdf(x) - _x_pdf(x) + 2 * c * _pdf(x)

    return float((antiderivative(b) - antiderivative(a)).sum())


def distortion_slope(step: float, n_levels: int, kind: str) -> float:
    """``dD/dstep``, UniQ Eq. 8 written over every cell: each level is ``c_k = m_k * step``, so
    ``dD/dstep = -2 sum_k m_k int_cell_k (x - c_k) pdf(x) dx`` (the Leibniz boundary terms
    cancel because ``(x - Q(x))^2`` is continuous at the decision levels). For weights this is
    Eq. 8 exactly: the negative half of the line doubles the positive half, which Eq. 8
    spells out."""
    c, a, b = _cells(step, n_levels, kind)
    first_moment = _pdf(a) - _pdf(b) - c * (torch.special.ndtr(b) - torch.special.ndtr(a))
    return float(-2 * (c / step * first_moment).sum())


def optimal_step_size(n_levels: int, kind: str = "weight") -> float:
    """The unit step size ``step^u`` solving ``dD/dstep = 0`` (UniQ Eq. 8, Table 1).

    ``kind="weight"``: symmetric quantizer (Eq. 3) on a unit Gaussian; scale by ``Std(W)``
    (Eq. 9). ``kind="activation"``: unsigned quantizer (Eq. 5) on a ReLU'd unit Gaussian;
    scale by ``sqrt(2 E[X^2])`` (Eq. 10). Solved by bisection in float64 for
    ``2 <= n_levels <= 256`` and cached; e.g. 1.596 / 0.996 / 0.586 / 0.335 for weights at
    N = 2 / 4 / 8 / 16.
    """
    _check(n_levels, kind)
    return _solve_step(n_levels, kind)


def optimal_sqnr_db(n_levels: int, kind: str = "weight") -> float:
    """SQNR at the optimal step (UniQ Table 1): ``10 log10(Var[X] / D(step^u))``, see the
    module docstring for why the signal is the variance. The dashed line of UniQ Fig. 4."""
    _check(n_levels, kind)
    noise = distortion(_solve_step(n_levels, kind), n_levels, kind)
    return 10 * math.log10(SIGNAL_VARIANCE[kind] / noise)


@functools.cache  # after _check: the cache would answer 2.0 or True with the entry for 2
def _solve_step(n_levels: int, kind: str) -> float:
    lo, hi = _BRACKET
    # D falls while clipping dominates (small steps) and rises once rounding does, so the
    # slope changes sign once in the bracket.
    for _ in range(200):
        mid = (lo + hi) / 2
        if distortion_slope(mid, n_levels, kind) < 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return (lo + hi) / 2


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Measured SQNR of a quantizer's input ``x`` and output ``x_hat`` in dB, with the
    convention of UniQ Table 1 / Fig. 4: ``10 log10(Var[x] / mean((x - x_hat)^2))``."""
    x, x_hat = x.detach().double(), x_hat.detach().double()
    noise = (x - x_hat).square().mean()
    return float(10 * torch.log10(x.var(correction=0) / noise))


def _channel_view(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    # Kernel-wise statistics reduce over everything but dim 0 (the output channel).
    return x.detach().reshape(x.shape[0], -1) if per_channel else x.detach().reshape(1, -1)


def mse_weight_step(w: torch.Tensor, n_levels: int, per_channel: bool) -> torch.Tensor:
    """UniQ Eq. 9: ``step^u_w * Std(W)``, per output channel when ``per_channel``
    (shape ``(C,)``), else a scalar. Population std, so one-element channels give 0."""
    std = _channel_view(w, per_channel).std(dim=1, correction=0)
    step = optimal_step_size(n_levels, "weight") * std
    return step if per_channel else step.reshape(())


def mse_activation_step(x: torch.Tensor, n_levels: int) -> torch.Tensor:
    """UniQ Eq. 10 on one batch: ``step^u_a * sqrt(2 E[X^2])`` (a scalar)."""
    second_moment = x.detach().float().square().mean()
    return optimal_step_size(n_levels, "activation") * (2 * second_moment).sqrt()


def lsq_step(x: torch.Tensor, q_p: int, per_channel: bool = False) -> torch.Tensor:
    """LSQ's initial step ``2 E|X| / sqrt(Q_P)`` (Esser et al. 2020, §2.1; UniQ §5.2 Table 5),
    per output channel when ``per_channel`` (shape ``(C,)``), else a scalar."""
    step = 2 * _channel_view(x, per_channel).float().abs().mean(dim=1) / math.sqrt(q_p)
    return step if per_channel else step.reshape(())
