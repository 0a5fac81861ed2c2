"""PACT (Choi et al. 2018), DoReFa weights (UniQ Eq. 2, seed 003) and AdaBits' "modified"
weight rounding (REFERENCE-FACTS.md), in float64.

Nothing here comes from ``lowbit``. Rounding is under the straight-through estimator
(``c + (q - c).detach()``); clips are written as the papers' piecewise functions so that
autograd gives the papers' gradients.
"""

from __future__ import annotations

import torch

F64 = torch.float64


def pact_clip(x: torch.Tensor, alpha: torch.Tensor, signed: bool) -> torch.Tensor:
    """PACT Eq. 1, ``y = 0.5 (|x| - |x - alpha| + alpha)``, piecewise: 0 on ``(-inf, 0)``,
    ``x`` on ``[0, alpha)``, alpha on ``[alpha, inf)``, so ``dy/dalpha = 1`` for
    ``x >= alpha`` and 0 below (PACT Eq. 3) and ``dy/dx = 1`` on ``[0, alpha)``.

    Two-sided (the spec's signed inputs): ``-alpha`` on ``(-inf, -alpha]``, ``x`` on
    ``(-alpha, alpha)``, alpha on ``[alpha, inf)``; ``dy/dalpha = -1`` for ``x <= -alpha``."""
    xd = x.detach()
    high = torch.where(xd >= alpha.detach(), alpha, x)
    if signed:
        return torch.where(xd <= -alpha.detach(), -alpha, high)
    return torch.where(xd < 0, torch.zeros_like(x), high)


def pact_steps(bits: int, signed: bool) -> int:
    """Steps between zero and alpha: ``2^b - 1`` unsigned (DoReFa's ``quantize_k``), and
    ``2^(b-1) - 1`` two-sided (the spec: codes ``-(2^(b-1)-1) .. 2^(b-1)-1``)."""
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def pact(
    x: torch.Tensor,
    alpha: torch.Tensor,
    bits: int,
    signed: bool = False,
    alpha_gradient: str = "pact",
) -> torch.Tensor:
    """PACT Eq. 2, ``y_q = round(y (2^b - 1) / alpha) alpha / (2^b - 1)``, ``y`` of Eq. 1.

    ``alpha_gradient="pact"``: Eq. 3, STE on the whole quantization, ``dy_q/dy = 1``, so
    ``dy_q/dalpha = dy/dalpha`` (1 for ``x >= alpha``, 0 inside). ``"adabits"``: autograd of
    AdaBits' ``alpha * q(y / alpha)`` with STE on ``q`` only: ``(y_q - x) / alpha`` inside,
    ``sign(x)`` outside (the spec's coquant default). Ties round half to even
    (``torch.round``, as the spec says)."""
    n = pact_steps(bits, signed)
    y = pact_clip(x, alpha, signed)
    if alpha_gradient == "pact":
        q = torch.round(y.detach() * n / alpha.detach()) * (alpha.detach() / n)
        return y + (q - y).detach()
    v = y / alpha
    q = torch.round(v.detach() * n) / n
    return alpha * (v + (q - v).detach())


def pact_margin(x: torch.Tensor, alpha: float, bits: int, signed: bool) -> torch.Tensor:
    """Distance (in steps) of ``x`` to a rounding boundary or a clipping bound."""
    n = pact_steps(bits, signed)
    v = x.detach().double().reshape(-1) * n / alpha
    rounding = (v - torch.floor(v) - 0.5).abs()
    bounds = torch.minimum((v - n).abs(), (v + n).abs() if signed else v.abs())
    return torch.minimum(rounding, bounds)


def dorefa_unit(w: torch.Tensor) -> torch.Tensor:
    """UniQ Eq. 2's argument: ``tanh(w) / (2 max|tanh(w)|) + 1/2`` in ``[0, 1]``, gradients
    through the max as well (autograd of the formula)."""
    t = torch.tanh(w)
    return t / (2 * t.abs().max()) + 0.5


def dorefa_weight(
    w: torch.Tensor, bits: int, scheme: str = "original", rescale: bool = True
) -> torch.Tensor:
    """UniQ Eq. 2: ``2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1`` with
    ``quantize_k(u) = round(u (2^k - 1)) / (2^k - 1)`` (``scheme="original"``, DoReFa), or
    AdaBits' ``quantize_k(u) = min(floor(2^k u), 2^k - 1) / 2^k`` (``"modified"``), STE on
    ``quantize_k``. ``round`` is half to even (``torch.round``; DoReFa's ``tf.round`` too).

    ``rescale``: times ``std(w) / std(q)``, both detached (the spec keeps AdaBits' "stddev"
    rescale as the dorefa/pact/coquant default)."""
    u = dorefa_unit(w)
    ud = u.detach()
    if scheme == "original":
        n = 2**bits - 1
        q = torch.round(ud * n) / n
    elif scheme == "modified":
        n = 2**bits
        q = torch.clamp(torch.floor(ud * n), max=n - 1) / n
    else:
        raise ValueError(scheme)
    out = 2 * (u + (q - u).detach()) - 1
    if rescale:
        out = out * (w.detach().std() / out.detach().std())
    return out


def dorefa_margin(w: torch.Tensor, bits: int, scheme: str) -> torch.Tensor:
    """Distance of ``u (2^k - 1)`` to a half-integer (original) or of ``2^k u`` to an integer
    (modified). The extremes ``u = 0`` and ``u = 1`` (the weights of largest magnitude, exact
    in any precision) are no boundaries: the ``min`` makes the floor continuous at 1."""
    u = dorefa_unit(w.detach().double()).reshape(-1)
    if scheme == "original":
        v = u * (2**bits - 1)
        return (v - torch.floor(v) - 0.5).abs()
    v = u * 2**bits
    margin = (v - torch.round(v)).abs()
    return torch.where((u >= 1) | (u <= 0), torch.ones_like(margin), margin)
