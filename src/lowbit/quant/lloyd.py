"""Lloyd-Max levels: a non-uniform level set fit to the tensor it quantizes (APoT Table 3).

APoT's ablation compares its levels with "a non-uniform quantizer using Lloyd algorithm (Cai et
al., 2017)": levels placed where the data are, at the price of float multiplications (Table 3
prices the Lloyd rows at the float model's 1.81G FixOPs). ``lloyd_levels`` is Lloyd's
algorithm in one dimension: alternately cut the line at the midpoints of the levels and move
each level to the mean of the values in its cell, which lowers the mean squared error at every
step (a Lloyd-Max quantizer at convergence).

``LloydQuantizer`` puts such levels inside APoT's RCF (``RCFQuantizer``), so Table 3's columns
apply to it as to the fixed level sets: weight normalization (Eq. 9), alpha learned by RCF
(Eq. 8) or PACT (Eq. 11), or no clipping (alpha = max|W|). The levels are fit to
``clip(x / alpha)``, the values the projection sees (the largest level is then below 1, and
alpha's Eq. 8 gradient beyond the range is that level rather than 1: the derivative of
``alpha * Pi(clip(x / alpha))`` all the same), and refit on a schedule:

* at calibration (``observe``, the inputs of the first ``calibrate_batches`` batches),
* at the first training call and then every ``refit_every`` training calls (100 by default:
  weights move little in 100 steps, and each fit costs a sort of the tensor), counted by
  ``calls``; and at the first training call whenever the levels were never fit (progressive
  initialization from another bit-width loads ``calls`` but not the levels, whose shape
  differs),
* never in evaluation mode: a trained model keeps the levels it was trained with, which the
  state dict carries (``levels``, persistent, with the count of training calls ``calls``).
"""

from __future__ import annotations

import torch

from lowbit.errors import LowbitError, require_positive
from lowbit.quant.apot import RCFQuantizer

# Values a fit reads at most: evenly spaced picks of a larger tensor (an ImageNet batch's
# activations), so a fit costs one sort of at most this many values; no random numbers drawn.
MAX_FIT_SAMPLES = 2**20
# Lloyd steps per fit at most. On finitely many values the cells stop changing after finitely
# many steps (a fixed point: every level the mean of its cell): tens for small tensors, up to
# thousands at 2**20 values. A refit starts from the levels of the last fit, so over training
# the steps add up while each fit stays cheap (a sort, then a search per level per step).
FIT_ITERATIONS = 100


def lloyd_levels(
    values: torch.Tensor, count: int, iterations: int = FIT_ITERATIONS,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """``count`` sorted levels (float64) minimizing the mean squared error of nearest-level
    quantization of ``values``: Lloyd steps from ``start`` (default: the quantiles at
    ``(k + 1/2) / count``) until no level moves, ``iterations`` at most. A level whose cell
    holds no value stays where it is. Fewer distinct values than levels give those values
    (and repeats)."""
    if count < 1:
        raise LowbitError(f"Lloyd's algorithm needs at least one level, got {count}")
    data = values.detach().reshape(-1).double().sort().values
    if data.numel() == 0:
        raise LowbitError("Lloyd's algorithm needs values to fit levels to")
    sums = torch.cat([data.new_zeros(1), data.cumsum(0)])
    if start is None:
        positions = (torch.arange(count, dtype=torch.float64, device=data.device) + 0.5) / count
        levels = data[(positions * data.numel()).long().clamp(max=data.numel() - 1)]
    else:
        levels = start.detach().to(data).sort().values
    for _ in range(iterations):
        cuts = torch.searchsorted(data, (levels[1:] + levels[:-1]) / 2)
        edges = torch.cat([cuts.new_zeros(1), cuts, cuts.new_full((1,), data.numel())])
        sizes = edges[1:] - edges[:-1]
        means = (sums[edges[1:]] - sums[edges[:-1]]) / sizes.clamp(min=1)
        moved = torch.where(sizes > 0, means, levels).sort().values
        if torch.equal(moved, levels):
            break
        levels = moved
    return levels


def even_picks(x: torch.Tensor, limit: int = MAX_FIT_SAMPLES) -> torch.Tensor:
    """At most ``limit`` elements of ``x``, evenly spaced over its flattened order."""
    flat = x.detach().reshape(-1)
    if flat.numel() <= limit:
        return flat
    index = torch.linspace(0, flat.numel() - 1, limit, device=flat.device).long()
    return flat.index_select(0, index)


def unit_lloyd_levels(
    x: torch.Tensor, alpha: torch.Tensor, bits: int, signed: bool,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Levels in units of ``alpha`` fit to ``clip(x / alpha)``, the values RCF projects:
    ``2**bits`` levels in [0, 1] for unsigned data; for signed data ``2**(bits - 1)``
    magnitudes fit to ``|x|`` and mirrored, the symmetric Lloyd-Max quantizer of a symmetric
    distribution (``2**bits`` levels, no zero level). ``start``: levels of that shape to
    continue from (``lloyd_levels``)."""
    u = even_picks(x).double() / float(alpha)
    if signed:
        half = None if start is None else start[start.numel() // 2:]
        magnitudes = lloyd_levels(u.abs().clamp(max=1.0), 2 ** (bits - 1), start=half)
        return torch.cat([-magnitudes.flip(0), magnitudes])
    return lloyd_levels(u.clamp(0.0, 1.0), 2**bits, start=start)


def uniform_cell_centres(bits: int, signed: bool) -> torch.Tensor:
    """The Lloyd-Max levels of a uniform distribution on [-1, 1] (signed) or [0, 1]: the
    centres of ``2**bits`` equal cells; the levels before the first fit."""
    count = 2**bits
    centres = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    return centres * 2 - 1 if signed else centres


class LloydQuantizer(RCFQuantizer):
    """RCF on Lloyd-Max levels refit to the data (module docstring: the schedule). Takes
    ``RCFQuantizer``'s options (``alpha``, ``normalize``, ``clipping``, ...) and
    ``refit_every``: training calls between two fits."""

    def __init__(self, bits: int, signed: bool, alpha: float, refit_every: int = 100,
                 **options) -> None:
        super().__init__("uniform", bits, signed, alpha, **options)
        require_positive(refit_every, "refit_every")
        if isinstance(refit_every, bool) or not isinstance(refit_every, int):
            raise LowbitError(f"refit_every must be a whole number, got {refit_every!r}")
        self.level_set, self.refit_every = "lloyd", refit_every
        self.register_buffer("levels", uniform_cell_centres(bits, signed).float())
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.table = None  # arbitrary levels: projection by binary search
        self.started = False  # until the first training call, the one that asks never_fit

    @torch.no_grad()
    def refit(self, x: torch.Tensor) -> None:
        """Fit the levels to ``x`` (the quantizer's input, before normalization), continuing
        from the levels of the last fit when there was one."""
        x, _ = self.normalized(x.detach())
        start = None if self.never_fit() else self.levels
        fitted = unit_lloyd_levels(x, self.threshold(x).detach(), self.bits, self.signed, start)
        self.levels.copy_(fitted)

    def observe(self, x: torch.Tensor) -> None:
        self.refit(x)

    def never_fit(self) -> bool:
        """Whether the levels are still the ones a new quantizer starts from."""
        start = uniform_cell_centres(self.bits, self.signed).to(self.levels)
        return bool(torch.equal(self.levels, start))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            first = not self.started
            self.started = True
            if int(self.calls) % self.refit_every == 0 or first and self.never_fit():
                self.refit(x)
            self.calls += 1
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, refit_every={self.refit_every}"
