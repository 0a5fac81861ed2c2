"""Relaxed Quantization (RQ, Louizos et al. 2019) and Semi-Relaxed Quantization with DropBits
(SRQ; seed 004, Eq. 1-4, Algorithms 1-3), in float64.

Nothing here comes from ``lowbit``. The SRQ forward is the mode of the categorical
distribution over the whole grid and its backward the multi-class straight-through estimator
written as a surrogate, ``g_imax (1 + r_imax - r_imax.detach())``; RQ is autograd of Eq. 2
given the Gumbel noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

F64 = torch.float64
# DropBits Eq. 4 constants (§F): stretch (gamma, zeta) = (-0.1, 1.1), temperature tau_0 = 0.2.
GAMMA, ZETA, TAU0 = -0.1, 1.1, 0.2
NO_MASK = -1


def grid_integers(bits: int, signed: bool) -> tuple[int, int]:
    """§3.1 / App. G: ``G = alpha [-2^(b-1), ..., 2^(b-1) - 1]`` (weights, and the spec's
    signed inputs), ``alpha [0, ..., 2^b - 1]`` for activations after a ReLU."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def log_pi(x: torch.Tensor, k: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
    """Eq. 1, ``pi_i = Sigmoid((g_i + alpha/2 - x)/sigma) - Sigmoid((g_i - alpha/2 - x)/sigma)``
    with ``g_i = alpha k_i``, as a log. Written through the identity
    ``S(a) - S(b) = S(a) S(-b) (1 - e^(b - a))`` (exact algebra, ``a - b = alpha / sigma``),
    whose terms do not cancel far from ``x`` as the difference of two CDFs near 1 does."""
    a = (alpha * k + alpha / 2 - x) / sigma
    b = a - alpha / sigma
    return F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-alpha / sigma))


def bitwise_mask_group(k: int) -> int:
    """§3.3 / Figure 3(b), bitwise-sharing masks: the grid points a ``(j+2)``-bit grid adds to
    the ``(j+1)``-bit one share mask ``j``; ``k = -1, 0, 1`` are never masked (``Z = 1``,
    "so as to prohibit all the binary masks from becoming zero")."""
    if -1 <= k <= 1:
        return NO_MASK
    bits = 2
    while not -(2 ** (bits - 1)) <= k <= 2 ** (bits - 1) - 1:
        bits += 1
    return bits - 2


def point_gates(gates: torch.Tensor, bits: int) -> torch.Tensor:
    """``Z`` of every grid point (weights' grid), 1 where unmasked."""
    lo, hi = grid_integers(bits, True)
    groups = [bitwise_mask_group(k) for k in range(lo, hi + 1)]
    one = torch.ones((), dtype=gates.dtype)
    return torch.stack([one if g == NO_MASK else gates[g] for g in groups])


def srq_scores(x, alpha, sigma, bits, signed, gates=None):
    """``log(Z_i pi_i)`` over the whole grid (``-inf`` where ``Z_i = 0``) and the grid."""
    lo, hi = grid_integers(bits, signed)
    k = torch.arange(lo, hi + 1, dtype=x.dtype)
    scores = log_pi(x.unsqueeze(-1), k, alpha, sigma)
    if gates is not None:
        scores = scores + point_gates(gates, bits).log()
    return scores, k


def mode_index(scores: torch.Tensor) -> torch.Tensor:
    """``argmax_i`` of Algorithm 1 line 16; points whose scores equal the best (a value
    half-way between two grid points, to rounding) go to the larger point, the tie rule
    ``lowbit.quant.logistic_grid`` states."""
    tolerance = 1e-9 if scores.dtype == F64 else 1e-5
    best = scores.max(dim=-1, keepdim=True).values
    tied = scores >= best - tolerance * best.abs().clamp(min=1)
    order = torch.arange(scores.shape[-1], dtype=scores.dtype)
    return torch.where(tied, order, -1.0).argmax(dim=-1, keepdim=True)


def srq(
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    bits: int,
    signed: bool,
    gates: torch.Tensor | None = None,
) -> torch.Tensor:
    """SRQ, Eq. 3 and Algorithm 1 lines 5-17: ``pi`` of Eq. 1 over the whole grid,
    ``r = Z pi / sum_j Z_j pi_j`` (line 12; ``pi / sum pi`` without DropBits, line 14),
    ``y = one_hot(argmax r)``, ``x_hat = y . G``. Backward, Eq. 3: ``dL/dr_imax = dL/dy_imax``
    and ``dL/dr_i = 0`` for every other ``i``; ``G = alpha k`` is differentiated as it
    stands. ``gates`` (one ``Z`` per bitwise mask) may carry gradients."""
    lo, hi = grid_integers(bits, signed)
    k = torch.arange(lo, hi + 1, dtype=x.dtype)
    log_p = log_pi(x.unsqueeze(-1), k, alpha, sigma)
    scores = log_p.detach()
    p = torch.softmax(log_p, dim=-1)  # pi / sum pi, line 14
    if gates is not None:  # line 11-12: Z pi / sum Z pi (a zero gate keeps its gradient)
        z = point_gates(gates, bits)
        scores = scores + z.detach().log()
        p = p * z
        p = p / p.sum(-1, keepdim=True)
    index = mode_index(scores)
    r_max = p.gather(-1, index).squeeze(-1)
    g_max = alpha * k[index.squeeze(-1)]
    return g_max * (1 + r_max - r_max.detach())


def srq_margin(x, alpha, sigma, bits, signed, gates=None) -> torch.Tensor:
    """Gap between the best and the second-best ``log(Z pi)``: near 0 the mode is a
    near-tie that float32 may decide either way."""
    with torch.no_grad():
        scores, _ = srq_scores(x.double().reshape(-1), torch.tensor(alpha, dtype=F64),
                               torch.tensor(sigma, dtype=F64), bits, signed,
                               None if gates is None else gates.double())
        top = scores.topk(2, dim=-1).values
        return top[:, 0] - top[:, 1]


def round_to_grid(x: torch.Tensor, alpha: torch.Tensor, bits: int, signed: bool):
    """Algorithm 3 (RQ inference) and Algorithm 1 lines 27-28 (SRQ deployment):
    ``min(max(alpha round(x / alpha), g_0), g_last)``; a half-way value goes to the larger
    point (``lowbit.quant.logistic_grid``'s stated rule)."""
    lo, hi = grid_integers(bits, signed)
    return torch.floor(x / alpha + 0.5).clamp(lo, hi) * alpha


def window(x: torch.Tensor, alpha: float, sigma: float, bits: int, signed: bool, delta=3.0):
    """Louizos et al.'s local grid (REFERENCE-FACTS.md: "only grid points within +-delta sigma
    of round(x) need evaluating"): the ``K = 2 ceil(delta sigma / alpha + 1/2) + 1``
    consecutive grid integers centred on ``round(x / alpha)`` (half-way values up), at most
    the whole grid, shifted to stay inside it. Returns ``x.shape + (K,)`` integers."""
    lo, hi = grid_integers(bits, signed)
    half = math.ceil(delta * sigma / alpha + 0.5)
    size = min(2 * half + 1, hi - lo + 1)
    centre = torch.floor(x.detach().double() / alpha + 0.5)
    start = (centre - size // 2).clamp(lo, hi - size + 1)
    return start.unsqueeze(-1) + torch.arange(size, dtype=F64)


def rq(
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    tau: float,
    k: torch.Tensor,
    gumbel: torch.Tensor,
) -> torch.Tensor:
    """RQ's training forward, Eq. 2 / Algorithm 2: ``r = softmax((log pi_i + u_i) / tau)``,
    ``u_i ~ Gumbel(0, 1)`` given as ``gumbel``, ``x_hat = sum_i r_i g_i`` over the grid points
    ``k`` (the local window); gradients by autograd of the whole expression (RQ's
    reparameterization)."""
    k = k.to(x.dtype)
    logits = (log_pi(x.unsqueeze(-1), k, alpha, sigma) + gumbel.to(x.dtype)) / tau
    return alpha * (torch.softmax(logits, dim=-1) * k).sum(-1)


def rq_margin(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Distance of ``x / alpha`` to a half-integer, where the window's centre jumps."""
    v = x.detach().double().reshape(-1) / alpha
    return (v - torch.floor(v) - 0.5).abs()


def hard_concrete_given_sample(logits: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
    """DropBits Eq. 4, ``s = Sigmoid((log u - log(1 - u) + log Pi - log(1 - Pi)) / tau_0)``,
    ``Z = min(max(s (zeta - gamma) + gamma, 0), 1)``, with the logistic noise
    ``log u - log(1 - u)`` recovered from a sampled ``Z`` (invertible where ``0 < Z < 1``);
    ``logits = log Pi - log(1 - Pi)``. Where the sample was clipped to 0 or 1, ``Z`` does not
    depend on Pi."""
    z = sampled.to(logits.dtype)
    open_ = (z > 0) & (z < 1)
    s = ((z - GAMMA) / (ZETA - GAMMA)).clamp(1e-12, 1 - 1e-12)
    noise = TAU0 * (torch.log(s) - torch.log1p(-s)) - logits.detach()
    recomputed = torch.sigmoid((noise + logits) / TAU0) * (ZETA - GAMMA) + GAMMA
    return torch.where(open_, recomputed.clamp(0, 1), z)


def gumbel_multiclass_gradients(
    x: torch.Tensor,
    alpha: float,
    sigma: float,
    bits: int,
    gumbel: torch.Tensor,
    tau: float,
    grad_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """App. E, "Gumbel-Softmax + multi-class STE", over the whole signed grid in float64:
    ``(x_hat, dL/dx, dL/dalpha, dL/dsigma)`` for ``L = sum(grad_out * x_hat)``.

    Forward: Eq. 2's concrete sample ``r_i = softmax((log pi_i + u_i) / tau)`` (``pi`` of
    Eq. 1, ``u = gumbel``), made hard, ``y = one_hot(argmax_i r_i)`` and ``x_hat = sum_i y_i
    g_i`` with ``g_i = alpha k_i`` (Eq. 3's forward). Backward, Eq. 3: ``dL/dr_m = dL/dy_m =
    grad_out g_m`` for ``m = imax`` and ``dL/dr_i = 0`` otherwise; the softmax Jacobian of
    Eq. 2 written out, ``dr_m / dlog pi_j = r_m ([j = m] - r_j) / tau``; ``log pi`` (Eq. 1)
    differentiated by autograd; and ``x_hat = alpha k_m`` adds ``grad_out k_m`` to alpha."""
    lo, hi = grid_integers(bits, True)
    k = torch.arange(lo, hi + 1, dtype=F64)
    x = x.detach().double().requires_grad_()
    alpha_t = torch.tensor(alpha, dtype=F64, requires_grad=True)
    sigma_t = torch.tensor(sigma, dtype=F64, requires_grad=True)
    log_p = log_pi(x.unsqueeze(-1), k, alpha_t, sigma_t)  # Eq. 1
    with torch.no_grad():
        r = torch.softmax((log_p + gumbel.double()) / tau, dim=-1)  # Eq. 2
        m = r.argmax(dim=-1)
        r_m = r.gather(-1, m.unsqueeze(-1)).squeeze(-1)
        k_m = k[m]
        grad = grad_out.double()
        upstream = (grad * alpha * k_m * r_m).unsqueeze(-1)  # dL/dr_m r_m
        d_log_pi = upstream * (F.one_hot(m, k.numel()).to(F64) - r) / tau
    grad_x, grad_alpha, grad_sigma = torch.autograd.grad(
        log_p, (x, alpha_t, sigma_t), d_log_pi
    )
    return alpha * k_m, grad_x, grad_alpha + (grad * k_m).sum(), grad_sigma
