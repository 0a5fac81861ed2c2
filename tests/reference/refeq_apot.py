"""APoT (Li et al., ICLR 2020; seed 001) and the APoT authors' first/last-layer rule, in float64.

Written from the paper's equations only; nothing here comes from ``lowbit``. Gradients come
from autograd of a differentiable surrogate whose forward value is the quantizer's output and
whose derivative is the paper's straight-through estimator (STE): ``c + (q - c).detach()``.

Level sets are kept *unnormalized* (``S``, exact dyadic rationals) with their maximum ``M``;
the paper's normalized set is ``S / M`` and the scaled set ``alpha * S / M``. Projections
compare ``x`` with ``(alpha / M) * S``, which is exact in floating point whenever
``alpha / M`` is a power of two, so tests can place inputs exactly on decision boundaries.
"""

from __future__ import annotations

import itertools

import torch

F64 = torch.float64
EPS_EQ9 = 1e-5  # Eq. 9's epsilon, "typically 10^-5"


def uniform_magnitudes(bits: int) -> list[float]:
    """Eq. 2, unsigned ``bits``-bit data: ``{0, 1, ..., 2^b - 1}`` (``/ (2^b - 1)`` once
    normalized). Eq. 2 prints the signed set ``alpha {0, +-1/(2^(b-1)-1), ..., +-1}``, which
    is this set at ``b - 1`` bits mirrored (footnote 2: one more bit for the sign)."""
    return [float(i) for i in range(2**bits)]


def pot_magnitudes(bits: int) -> list[float]:
    """Eq. 3, unsigned: ``{0, 2^-(2^b - 2), ..., 2^-1, 1}``.

    Eq. 3 as printed lists ``2^(b-1)`` powers plus zero per sign, one level more than
    ``b`` bits can code; the ``2^b - 1`` largest powers and zero are the set that fits (the
    smallest power is the one dropped)."""
    return [0.0] + [2.0**-e for e in range(2**bits - 1)]


def apot_terms(bits: int) -> list[list[float]]:
    """The additive terms of Eq. 5 (``b = 2n``) and Eq. 6 (``b = 2n + 1``) with ``k = 2``:

    Eq. 5: ``p_i in {0, 2^-i, 2^-(i+n), 2^-(i+2n)}``, ``i = 0 .. n-1``.
    Eq. 6: ``p_i in {0, 2^-i, 2^-(i+n), 2^-(i+2n+1)}`` and ``p~ in {0, 2^-2n}``.

    (Eq. 6 prints ``p~ in {0, 2^-(i+2n)}`` with no ``i`` in scope; the 3-bit example of §2.2,
    ``p0 in {0, 2^-1, 2^-2, 2^-4}``, ``p~ in {0, 2^-3}``, is ``2^-2n`` after the common factor.)
    """
    n = bits // 2
    if bits % 2 == 0:
        return [[0.0, 2.0**-i, 2.0 ** -(i + n), 2.0 ** -(i + 2 * n)] for i in range(n)]
    odd = [[0.0, 2.0**-i, 2.0 ** -(i + n), 2.0 ** -(i + 2 * n + 1)] for i in range(n)]
    return odd + [[0.0, 2.0 ** -(2 * n)]]


def apot_magnitudes(bits: int) -> list[float]:
    """Eq. 5 / 6 before the scale gamma: every sum of one value per term."""
    return [sum(choice) for choice in itertools.product(*apot_terms(bits))]


MAGNITUDES = {"uniform": uniform_magnitudes, "pot": pot_magnitudes, "apot": apot_magnitudes}


def unnormalized_levels(level_set: str, bits: int, signed: bool) -> tuple[torch.Tensor, float]:
    """The sorted set ``S`` and its maximum ``M``: the quantizer's levels are
    ``alpha * S / M`` (gamma of Eq. 5 makes the largest level alpha).

    Signed data spend one bit on the sign (§2.2 footnote 2, §4.1 "one bit is used for the
    sign of the weights but not for activations"): magnitudes of ``bits - 1`` bits, mirrored."""
    magnitude_bits = bits - 1 if signed else bits
    magnitudes = sorted(set(MAGNITUDES[level_set](magnitude_bits)))
    values = torch.tensor(magnitudes, dtype=F64)
    if signed:
        values = torch.cat([-values.flip(0)[:-1], values])
    return values, float(values.abs().max())


def nearest_index(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted ``levels``; a value exactly half-way between two
    levels goes to the larger one (the tie rule ``lowbit.quant.project`` states)."""
    midpoints = (levels[1:] + levels[:-1]) / 2
    return torch.searchsorted(midpoints, x.detach().contiguous(), right=True)


def rcf(
    x: torch.Tensor,
    alpha: torch.Tensor,
    level_set: str,
    bits: int,
    signed: bool,
    clip_input_gradient: bool = True,
) -> torch.Tensor:
    """Eq. 7, ``alpha * Pi_Q(1,b)(clip(x / alpha, 1))``, with Eq. 8's gradients:

    ``dW_hat/dalpha = Pi(W/alpha) - W/alpha`` if ``|W| <= alpha``, ``sign(W)`` otherwise,

    and STE on the projection, so ``x`` passes straight through inside the clipping range
    and gets zero outside (``clip_input_gradient``; activations). With
    ``clip_input_gradient=False`` the input gradient is the identity (§2.5: "we use STE when
    computing the gradients of weights, i.e. dW_hat/dW_tilde = 1").

    Signed data clip to ``[-alpha, alpha]``; unsigned data (activations) only from above,
    ``clip(X / alpha, 1)`` of Algorithm 1 line 3 (a one-sided bracket, as the authors'
    ``clamp(max=1)``): a negative value projects to the zero level.
    """
    levels, top = unnormalized_levels(level_set, bits, signed)
    return rcf_on_levels(x, alpha, levels, top, signed, clip_input_gradient)


def rcf_on_levels(
    x: torch.Tensor,
    alpha: torch.Tensor,
    levels: torch.Tensor,
    top: float,
    signed: bool,
    clip_input_gradient: bool = True,
) -> torch.Tensor:
    """``rcf`` on the sorted set ``levels / top`` (any set in [-1, 1], Lloyd's too). The
    surrogate's alpha gradient is Eq. 13a's ``Pi(clip(W / alpha))`` plus the clip's term:
    ``Pi(W/alpha) - W/alpha`` inside and ``Pi(sign(W))`` beyond, which is Eq. 8's ``sign(W)``
    when the set reaches +-1 (Eq. 13b-c)."""
    levels = levels.to(x.dtype)
    scale = alpha.detach() / top  # levels * scale = alpha * S / M, compared with x directly
    clipped = x.detach().clamp(max=alpha.detach())
    if signed:
        clipped = clipped.clamp(min=-alpha.detach())
    index = nearest_index(clipped, levels * scale)
    projected = levels[index] / top  # Pi(clip(x / alpha)), a normalized level

    source = x if clip_input_gradient else x.detach()
    u = source / alpha
    inside = u.detach().abs() <= 1 if signed else u.detach() <= 1  # Eq. 8: |W| <= alpha
    c = torch.where(inside, u, torch.sign(u.detach()))
    out = alpha * (c + (projected - c).detach())
    if not clip_input_gradient:
        out = out + (x - x.detach())  # identity gradient to x, nothing changes forward
    return out


def rcf_margin(x: torch.Tensor, alpha: float, level_set: str, bits: int, signed: bool):
    """Distance of ``x`` to the nearest discontinuity of Eq. 7 / Eq. 8 (a decision boundary,
    or the clipping bound where Eq. 8 switches), in units of alpha."""
    levels, top = unnormalized_levels(level_set, bits, signed)
    points = (levels[1:] + levels[:-1]) / 2 * (alpha / top)
    bounds = [alpha, -alpha] if signed else [alpha]
    points = torch.cat([points, torch.tensor(bounds, dtype=F64)])
    return (x.detach().double().reshape(-1, 1) - points).abs().min(dim=1).values / alpha


def normalize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: ``W_tilde = (W - mu) / (sigma + eps)``, mu and sigma (population std, ``1/I``)
    over the whole layer, gradients through both (Algorithm 1 step 8). Returns
    ``(W_tilde, sigma + eps)``."""
    mu = w.mean()
    sigma = ((w - mu) ** 2).mean().sqrt()
    divisor = sigma + EPS_EQ9
    return (w - mu) / divisor, divisor


def apot_weight(
    w: torch.Tensor, alpha: torch.Tensor, level_set: str, bits: int, rescale: bool = True
) -> torch.Tensor:
    """Algorithm 1 lines 1-2 for weights: Eq. 9, then Eq. 7 on the signed set with Eq. 8's
    alpha gradient and the identity weight gradient of §2.5.

    ``rescale`` (the spec's default): the output is multiplied by the same ``sigma + eps``
    that normalized it, ``W_hat = (sigma + eps) alpha Pi(clip(W_tilde / alpha))``, the
    factor being the differentiable statistic of Eq. 9 (not detached)."""
    w_tilde, divisor = normalize_weight(w)
    out = rcf(w_tilde, alpha, level_set, bits, signed=True, clip_input_gradient=False)
    return out * divisor if rescale else out


def apot_weight_margin(w: torch.Tensor, alpha: float, level_set: str, bits: int):
    w_tilde, _ = normalize_weight(w.detach().double())
    return rcf_margin(w_tilde, alpha, level_set, bits, signed=True)


def maxscale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """The APoT authors' first/last-layer rule (APoT §4: first and last layer at 8 bits):
    ``round(w / max(W) * n) / n * max(W)``, ``n = 2^(b-1) - 1`` (127 at 8 bits), ``max(W)``
    the largest weight, nothing clipped, straight-through: ``w + (q - w).detach()``.
    ``round`` is half to even (``torch.round``, as the authors' PyTorch code)."""
    n = 2 ** (bits - 1) - 1
    top = w.detach().max()
    q = torch.round(w.detach() / top * n) / n * top
    return w + (q - w).detach()


def maxscale_margin(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Distance of ``w / max(W) * n`` to the nearest rounding boundary (a half-integer)."""
    n = 2 ** (bits - 1) - 1
    w = w.detach().double()
    code = w / w.max() * n
    return (code - torch.floor(code) - 0.5).abs().reshape(-1)


def pact_clip(
    x: torch.Tensor,
    alpha: torch.Tensor,
    level_set: str,
    bits: int,
    signed: bool,
    clip_input_gradient: bool = True,
) -> torch.Tensor:
    """Eq. 7's forward with PACT's gradients (App. A.1): STE on the projection (Eq. 10), so

    Eq. 11: ``dW_hat/dalpha = sign(W)`` if ``|W| > alpha``, ``0`` if ``|W| <= alpha``

    (unsigned data: 1 above alpha, 0 below it). ``x`` gets the same straight-through
    gradient as in ``rcf``: zero outside the range, or the identity with
    ``clip_input_gradient=False``."""
    value = rcf(x.detach(), alpha.detach(), level_set, bits, signed)
    u = x.detach() / alpha.detach()
    outside = u.abs() > 1 if signed else u > 1
    direction = torch.where(outside, torch.sign(u), torch.zeros_like(u))
    through = x - x.detach()
    if clip_input_gradient:
        through = torch.where(outside, torch.zeros_like(through), through)
    return value + direction * (alpha - alpha.detach()) + through


def lloyd_cell_means(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The condition a Lloyd-Max quantizer meets (Lloyd's method I): every level is the mean
    of the values nearest to it. Returns that mean per level (the level itself where no value
    is nearest), float64; the set is a fixed point of Lloyd's algorithm when it equals
    ``levels``."""
    values, levels = values.double().reshape(-1), levels.double()
    index = nearest_index(values, levels)
    means = levels.clone()
    for k in range(levels.numel()):
        members = values[index == k]
        if members.numel():
            means[k] = members.mean()
    return means
