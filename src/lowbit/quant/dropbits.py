"""DropBits (SRQ paper §3.3) and learned bit-widths (§3.5): random masks over grid levels.

The grid of a b-bit weight quantizer is ``alpha * k`` for ``k`` in ``[-2^(b-1), 2^(b-1)-1]``.
Groups of grid points share one binary mask ``Z`` per layer; the middle points
``k = -1, 0, 1`` (grid indices ``2^(b-1)-1 ... 2^(b-1)+1``) are never masked, so at least a
ternary grid always survives. Two designs (Figure 3):

* ``"bitwise"`` (3b, the default): one mask per bit level. Level ``j`` (``j = 0 .. b-2``,
  "``j+2`` bits") covers the points a ``(j+2)``-bit grid adds to the ``(j+1)``-bit one:
  ``{-2}``, then ``{-4, -3, 2, 3}``, then ``{-8 .. -5, 4 .. 7}``, ...
* ``"endpoints"`` (3a): the grid is peeled from its ends, ``k`` sharing a mask with
  ``-1-k``: ``{-2}`` (its partner 1 is a middle point), ``{-3, 2}``, ``{-4, 3}``, ...

Masks are hard-concrete relaxations of Bernoulli variables (Eq. 4, Louizos et al. 2018)
with learnable keep probabilities Pi, stored as logits ``log Pi - log(1 - Pi)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lowbit.errors import LowbitError

MASK_DESIGNS = ("bitwise", "endpoints")
# Eq. 4 constants (§F): stretch interval (gamma, zeta) and temperature tau_0.
ZETA, GAMMA, TAU0 = 1.1, -0.1, 0.2
INIT_KEEP, INIT_KEEP_STD = 0.9, 0.01  # Pi ~ N(0.9, 0.01^2), §F
NO_MASK = -1
# Fate of a level once the regularized phase ends (§3.5 / §F): kept or dropped for good.
UNDECIDED, KEPT, DROPPED = 0, 1, -1

Run = tuple[int, int, int]  # (first grid integer, last grid integer, mask group or NO_MASK)


def mask_groups(bits: int, design: str = "bitwise") -> list[int]:
    """The mask group of every grid integer ``k = -2^(b-1) .. 2^(b-1)-1`` (``NO_MASK`` for the
    middle points), groups numbered from the middle outwards (Figure 3)."""
    _check_design(bits, design)
    half = 2 ** (bits - 1)
    groups = []
    for k in range(-half, half):
        if -1 <= k <= 1:
            groups.append(NO_MASK)
        elif design == "bitwise":
            # k first appears in the grid of b' bits, b' = bit_length(|k| or |k|-1) + 1.
            magnitude = k if k >= 0 else -k - 1
            groups.append(magnitude.bit_length() - 1)
        else:
            groups.append(-k - 2 if k < 0 else k - 1)
    return groups


def mask_count(bits: int, design: str = "bitwise") -> int:
    """Number of masks per layer: ``b - 1`` bitwise, ``2^(b-1) - 1`` endpoints-sharing."""
    return max(mask_groups(bits, design)) + 1


def mask_runs(bits: int, design: str = "bitwise") -> list[Run]:
    """Maximal runs of consecutive grid integers that share a mask, in increasing order.

    Within a run every score ``Z * pi_k`` has the same ``Z``, so SRQ's mode over the run is the
    run's point nearest to x: one candidate per run (``lowbit.quant.srq.srq_argmax``).
    """
    groups = mask_groups(bits, design)
    first = -(2 ** (bits - 1))
    runs: list[Run] = []
    for offset, group in enumerate(groups):
        k = first + offset
        if runs and runs[-1][2] == group:
            runs[-1] = (runs[-1][0], k, group)
        else:
            runs.append((k, k, group))
    return runs


def hard_concrete_sample(
    logits: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Eq. 4: ``Z = min(max(s (zeta - gamma) + gamma, 0), 1)`` with
    ``s = sigmoid((log u - log(1-u) + logits) / tau_0)``, ``u ~ U(0, 1)``; differentiable in
    ``logits`` wherever ``0 < Z < 1``."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    u = u.clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / TAU0)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def smoothed_l0(logits: torch.Tensor) -> torch.Tensor:
    """§3.5: ``R(Z; Pi) = sigmoid(log(Pi / (1 - Pi)) - tau_0 log(-gamma / zeta))``, the
    probability that a hard-concrete mask is non-zero."""
    return torch.sigmoid(logits - TAU0 * math.log(-GAMMA / ZETA))


def highest_alive(gates: torch.Tensor) -> int | None:
    """Index of the highest level whose gate is non-zero: the only level the §3.5
    regularizer ``sum_k I(Z_k > 0) prod_{j>k} I(Z_j = 0) R(Z_k; Pi_k)`` touches."""
    alive = torch.nonzero(gates > 0).flatten()
    return int(alive[-1]) if alive.numel() else None


def grid_bits(kept: list[int]) -> str:
    """Bits of the smallest grid ``[-2^(b-1), 2^(b-1)-1]`` holding the integers ``kept``;
    ``"T"`` (ternary) when only the middle points ``{-1, 0, 1}`` are left."""
    if all(-1 <= k <= 1 for k in kept):
        return "T"
    needed = max((k if k >= 0 else -k - 1).bit_length() for k in kept)
    return str(needed + 1)


class DropBitsMasks(nn.Module):
    """One set of DropBits masks for one layer's weights (§3.3), with the §3.5 regularizer.

    ``gates()`` gives one gate per mask: a hard-concrete sample (Eq. 4) in training; in
    evaluation 1 for every level that ``alive()`` keeps, else 0. Without learned bit-widths
    (``l0_lambda = 0``) evaluation keeps every level: Algorithm 1's DEPLOYMENT rounds onto the
    full grid, ``clamp(alpha Round(W / alpha), g_0, g_(2^b-1))``; the masks only add noise in
    training (§3.3). Levels dropped for good are 0 in both.

    Learned bit-widths (``l0_lambda > 0``, bitwise masks only): while training progress is
    below ``l0_fraction`` (default 50%, §F), ``regularization_loss()`` is ``lambda * R`` of the
    highest level whose gate in the last forward was non-zero; at the first ``set_progress``
    past it, levels with ``Pi < 0.5`` are dropped for good (the ``fate`` buffer) and training
    goes on with the rest. ``learned_bits()`` reports the result.
    """

    def __init__(
        self,
        bits: int,
        design: str = "bitwise",
        l0_lambda: float = 0.0,
        l0_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        _check_design(bits, design)
        if not l0_lambda >= 0:
            raise LowbitError(
                f"the L0 strength lambda must be >= 0 (paper: 5e-5 .. 1e-2), got {l0_lambda}"
            )
        if l0_lambda > 0 and design != "bitwise":
            raise LowbitError("learned bit-widths need bitwise masks; use masks='bitwise'")
        if not 0 < l0_fraction <= 1:
            raise LowbitError(f"l0_fraction must be in (0, 1], got {l0_fraction}")
        self.bits, self.design = bits, design
        self.l0_lambda, self.l0_fraction = float(l0_lambda), float(l0_fraction)
        self.groups = mask_groups(bits, design)
        count = mask_count(bits, design)
        keep = torch.normal(INIT_KEEP, INIT_KEEP_STD, (count,)).clamp(1e-3, 1 - 1e-3)
        self.logits = nn.Parameter(torch.log(keep) - torch.log1p(-keep))
        self.register_buffer("fate", torch.full((count,), UNDECIDED, dtype=torch.int8))
        self.progress = 0.0
        # Gates of the last forward: the regularizer needs to know which level was alive.
        self.last_gates: torch.Tensor | None = None

    def keep_probability(self) -> torch.Tensor:
        """Pi of every mask."""
        return torch.sigmoid(self.logits)

    def alive(self) -> torch.Tensor:
        """Levels an evaluation keeps (and ``learned_bits`` reports): every level not dropped
        for good when bits are not learned (``l0_lambda = 0``, Algorithm 1 DEPLOYMENT); with
        learned bits the levels kept at the end of the regularized phase (fate ``KEPT``) and,
        before it, those with ``Pi >= 0.5`` (§3.5, Table 3)."""
        if self.l0_lambda == 0:
            return self.fate != DROPPED
        return (self.fate == KEPT) | ((self.fate == UNDECIDED) & (self.logits >= 0))

    def gates(self) -> torch.Tensor:
        """One gate per mask for this forward (Eq. 4 sample in training)."""
        if self.training:
            gates = hard_concrete_sample(self.logits) * (self.fate != DROPPED)
        else:
            gates = self.alive().to(self.logits.dtype)
        self.last_gates = gates.detach()
        return gates

    def regularization_loss(self) -> torch.Tensor:
        """``lambda * R(Z_k; Pi_k)`` for the highest level alive in the last forward (§3.5)."""
        zero = self.logits.new_zeros(())
        if self.l0_lambda == 0 or self.progress >= self.l0_fraction:
            return zero
        gates = self.last_gates if self.last_gates is not None else self.alive()
        level = highest_alive(gates)
        if level is None:
            return zero
        return self.l0_lambda * smoothed_l0(self.logits[level])

    @torch.no_grad()
    def set_progress(self, fraction: float) -> None:
        """Training hook: at the end of the regularized phase drop levels with ``Pi < 0.5``."""
        self.progress = float(fraction)
        decided = bool((self.fate != UNDECIDED).any())
        if self.l0_lambda > 0 and fraction >= self.l0_fraction and not decided:
            keep = self.logits >= 0
            self.fate.copy_(torch.where(keep, KEPT, DROPPED).to(self.fate.dtype))

    def kept_points(self) -> list[int]:
        """The grid integers evaluation keeps (``alive``), in increasing order."""
        alive = self.alive().tolist()
        first = -(2 ** (self.bits - 1))
        return [first + i for i, g in enumerate(self.groups) if g == NO_MASK or alive[g]]

    def learned_bits(self) -> str:
        """The layer's bit-width as evaluation uses it: ``"4"``, ``"3"``, ... or ``"T"``."""
        return grid_bits(self.kept_points())

    def training_state(self) -> dict[str, torch.Tensor]:
        """Pi of every mask and the bit-width evaluation would use now, ternary counted as
        log2(3) bits (``lowbit.quant.hooks.StateReporter``)."""
        bits = self.learned_bits()
        width = math.log2(3) if bits == "T" else float(bits)
        return {"keep_probability": self.keep_probability().detach(),
                "learned_bits": torch.tensor(width)}

    def extra_repr(self) -> str:
        text = f"bits={self.bits}, design={self.design!r}"
        if self.l0_lambda:
            text += f", l0_lambda={self.l0_lambda:g}, l0_fraction={self.l0_fraction:g}"
        return text


def _check_design(bits: int, design: str) -> None:
    if design not in MASK_DESIGNS:
        raise LowbitError(f"masks must be one of {MASK_DESIGNS}, got {design!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 2:
        raise LowbitError(f"DropBits needs a grid of at least 2 bits, got bits={bits!r}")
