"""The learnable logistic-noise grid that RQ (Louizos et al. 2019) and SRQ (seed 004 §3.1-3.2,
Appendix G) share.

Both put ``x`` on the grid ``alpha * k``, ``k`` an integer in ``[lo, hi]`` (weights:
``[-2^(b-1), 2^(b-1)-1]``, or ``[-1, 1]`` for a ternary grid, Table 3's "T"; activations:
``[0, 2^b-1]``), through logistic noise of learnable scale ``sigma``. Grid point k owns the
cell ``alpha * [k - 1/2, k + 1/2]`` (Algorithm 2; Algorithm 1 lines 6-8, the end cells
included: ``lowbit.quant.srq.cell_mass``), so

    pi_k = S((alpha (k + 1/2) - x) / sigma) - S((alpha (k - 1/2) - x) / sigma)      (Eq. 1)

Nothing of size ``numel x 2^b`` is ever built (``rq.py``, ``srq.py`` say how). Ties (x exactly
half-way between two grid points) go to the larger point, as in ``lowbit.quant.project``.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.errors import LowbitError, require_positive
from lowbit.quant.hooks import GridView
from lowbit.quant.init import lsq_step
from lowbit.quant.precision import float32_compute

SIGMA_PER_ALPHA = 1 / 3  # sigma starts at alpha / 3 (the seed's §3.2 example, Louizos et al.)


def grid_bounds(bits: int, signed: bool, ternary: bool = False) -> tuple[int, int]:
    """Integer range of the grid: ``[-2^(b-1), 2^(b-1)-1]`` signed, ``[0, 2^b-1]`` unsigned,
    ``[-1, 1]`` ternary (seed 004 Table 3's "T": levels ``{-1, 0, 1} alpha``, 2 bits stored)."""
    if ternary:
        return -1, 1
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@float32_compute
def round_to_grid(x: torch.Tensor, alpha: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Deployment (Algorithm 3 / Algorithm 1): ``clamp(alpha * round(x / alpha))``."""
    return torch.floor(x / alpha + 0.5).clamp_(lo, hi) * alpha


def in_layout_of(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (``x``'s shape) in the strides ``torch.empty_like(x)`` has: the layout of
    the RQ and SRQ operators' outputs that their fake kernels promise (compiled graphs read
    the outputs by those strides), and, for a dense ``x``, the one the CPU kernels read
    ``x`` and a gradient in, element by element."""
    if values.stride() == x.stride():
        return values
    out = torch.empty_like(x, dtype=values.dtype)
    return values if values.stride() == out.stride() else out.copy_(values)


class LogisticGrid(nn.Module):
    """The learnable ``alpha`` and ``sigma`` of an RQ / SRQ grid (one pair per layer).

    ``alpha=None`` initializes from data: LSQ's ``2 E|x| / sqrt(Q_P)`` (Esser et al. 2020;
    the seed does not say how its grids start) on the first ``observe`` (calibration, the
    running maximum over batches) or else on the first forward; ``sigma = alpha / 3``.
    A value loaded from a state dict is kept. ``ternary=True`` (signed, 2 bits) narrows the
    grid to ``alpha {-1, 0, 1}``.
    """

    def __init__(
        self, bits: int, signed: bool, alpha: float | None, ternary: bool = False
    ) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise LowbitError(f"RQ / SRQ grids need bits in 2..8, got {bits!r}")
        if alpha is not None:
            require_positive(alpha, "alpha", " (or None to start from data)")
        if ternary not in (True, False):
            raise LowbitError(f"ternary must be true or false, got {ternary!r}")
        if ternary and (bits != 2 or not signed):
            raise LowbitError(
                "a ternary grid {-1, 0, 1} is for weights at 2 bits; set the layer's "
                f"weight_bits to 2 (got {bits}{'' if signed else ', unsigned'})"
            )
        self.bits, self.signed, self.ternary = bits, signed, ternary
        self.lo, self.hi = grid_bounds(bits, signed, ternary)
        self.q_p = max(self.hi, 1)
        start = 1.0 if alpha is None else float(alpha)
        self.alpha = nn.Parameter(torch.tensor(start))
        self.sigma = nn.Parameter(torch.tensor(start * SIGMA_PER_ALPHA))
        self.initialized = alpha is not None
        self._calibrating = False

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Calibration hook: set alpha (and sigma) from ``x``, keeping the running maximum."""
        if self.initialized and not self._calibrating:
            return
        estimate = float(lsq_step(x, self.q_p))
        if self.initialized:
            estimate = max(estimate, float(self.alpha))
        if estimate > 0:
            self.alpha.fill_(estimate)
            self.sigma.fill_(estimate * SIGMA_PER_ALPHA)
        self.initialized, self._calibrating = True, True

    def _start(self, x: torch.Tensor) -> None:
        if not self.initialized:
            self.observe(x)
        if self.training:
            self._calibrating = False

    def training_state(self) -> dict[str, torch.Tensor]:
        """Alpha and sigma (``lowbit.quant.hooks.StateReporter``); none before they are set
        from data."""
        if not self.initialized:
            return {}
        return {"alpha": self.alpha.detach(), "sigma": self.sigma.detach()}

    @torch.no_grad()
    def grid_view(self, x: torch.Tensor) -> GridView | None:
        """``x / alpha`` on the grid integers ``lo .. hi`` that evaluation rounds to
        (``lowbit.quant.hooks.GridReporter``); ``None`` before alpha is set from data."""
        if not self.initialized:
            return None
        alpha = self.alpha.detach()
        points = torch.tensor(self.grid_points(), device=x.device, dtype=x.dtype)
        return GridView(x / alpha, points, alpha)

    def grid_points(self) -> list[int]:
        """The grid integers evaluation rounds to: ``lo .. hi``."""
        return list(range(self.lo, self.hi + 1))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "alpha" in state_dict:
            self.initialized, self._calibrating = True, False
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        kind = "ternary" if self.ternary else "signed" if self.signed else "unsigned"
        return f"bits={self.bits}, {kind}"


