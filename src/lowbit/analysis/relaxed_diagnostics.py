"""Monte Carlo estimates behind SRQ Figure 6 (§3.4): quantization error, distribution bias
and gradient variance of RQ, SRQ and SRQ + DropBits at the midpoints of a grid.

The setting of §3.4: grid ``alpha [-2^(b-1) .. 2^(b-1)-1]`` with ``alpha = 1`` and x at the
midpoints of neighbouring grid points (``-3.5 .. 2.5`` at 3 bits). The paper does not print
the figure's sigma, tau or Pi; the defaults are sigma = alpha / 3 (the §3.2 example), tau = 1
(the RQ setting §3.2 quotes) and Pi = 0.9 (the §F initialization), bitwise masks.

For each method, over ``samples`` draws of its randomness (Gumbel noise for RQ, masks for
DropBits; SRQ has none):

* quantization error ``E|x - x_hat|`` with ``x_hat`` the grid point the method picks: the mode
  of Eq. 3 for SRQ (+ DropBits), and for RQ the point its concrete sample selects
  (``argmax_i r_i``, distributed as pi by the Gumbel-max trick; Eq. 2's weighted average is
  not a grid point);
* distribution bias ``||E[p] - pi / sum(pi)||_2``, ``p`` the ``r`` of Eq. 2 for RQ and the
  one-hot ``y`` of Eq. 3 for SRQ;
* gradient variance of the estimator ``dr_i / dpi_j``, ``i`` the grid point nearest x (ties
  go up) and summed over ``j``, the two grid points around x: RQ
  ``(delta_ij r_i - r_i r_j) / (tau pi_j)`` over Gumbel noise, SRQ + DropBits the same with
  ``r = Z pi / sum(Z pi)`` and tau = 1 over masks; SRQ's ``r = pi / sum(pi)`` is fixed, so 0.

    python -m lowbit.analysis.relaxed_diagnostics [--bits 3] [--plot fig6.png]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lowbit.errors import LowbitError
from lowbit.quant.dropbits import NO_MASK, hard_concrete_sample, mask_count, mask_groups, mask_runs
from lowbit.quant.logistic_grid import grid_bounds
from lowbit.quant.rq import log_cell_probability
from lowbit.quant.srq import srq_argmax

DESCRIPTION = " ".join(__doc__.split("\n\n")[0].split())  # the first paragraph, for --help
# Fig. 8 runs lowbit's operators once per draw: at most this many draws.
GRADIENT_BIAS_SAMPLES = 500
METHODS = ("RQ", "SRQ", "SRQ+DropBits")
METRICS = {
    "error": "quantization error E|x - x_hat|",
    "bias": "distribution bias ||E[p] - pi||",
    "variance": "gradient variance",
}


@dataclass(frozen=True)
class Estimate:
    """The three Figure 6 quantities of one method at one x (in units of alpha)."""

    x: float
    method: str
    error: float
    bias: float
    variance: float


def estimate(
    bits: int = 3,
    sigma: float = 1 / 3,
    temperature: float = 1.0,
    keep: float = 0.9,
    samples: int = 20000,
    seed: int = 0,
) -> list[Estimate]:
    """Figure 6's quantities at every midpoint of the ``bits``-bit weight grid, ``alpha = 1``."""
    if not (2 <= bits <= 8 and sigma > 0 and temperature > 0 and 0 < keep < 1 and samples > 1):
        raise LowbitError(
            "diagnostics need 2 <= bits <= 8, sigma > 0, temperature > 0, 0 < keep < 1 and "
            "samples > 1"
        )
    generator = torch.Generator().manual_seed(seed)
    lo, hi = grid_bounds(bits, signed=True)
    grid = torch.arange(lo, hi + 1, dtype=torch.float64)
    x = grid[:-1] + 0.5
    alpha, scale = torch.tensor(1.0, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
    log_pi = log_cell_probability(x[:, None], grid, alpha, scale)
    pi = log_pi.exp()
    target = pi / pi.sum(-1, keepdim=True)
    nearest = torch.arange(1, len(grid))  # index of the upper neighbour of each midpoint

    gumbel = torch.empty(samples, *pi.shape, dtype=torch.float64)
    gumbel.exponential_(generator=generator).log_().neg_()
    r = torch.softmax((log_pi + gumbel) / temperature, dim=-1)
    rq = (
        (x - grid[r.argmax(-1)]).abs().mean(0),
        (r.mean(0) - target).norm(dim=-1),
        _estimator_variance(r, pi, nearest, temperature),
    )

    k = srq_argmax(x, alpha, scale, [(lo, hi, NO_MASK)])
    srq = (
        (x - k).abs(),
        (_one_hot(k, lo, len(grid)) - target).norm(dim=-1),
        torch.zeros_like(x),
    )

    logit = math.log(keep / (1 - keep))
    logits = torch.full((samples, mask_count(bits)), logit, dtype=torch.float64)
    gates = hard_concrete_sample(logits, generator)
    k = srq_argmax(x, alpha, scale, mask_runs(bits), gates.log().T[:, :, None])
    groups = torch.tensor(mask_groups(bits))
    point_gates = torch.where(groups == NO_MASK, 1.0, gates[:, groups.clamp(min=0)])
    masked = point_gates[:, None, :] * pi
    dropbits = (
        (x - k).abs().mean(0),
        (_one_hot(k, lo, len(grid)).mean(0) - target).norm(dim=-1),
        _estimator_variance(masked / masked.sum(-1, keepdim=True), pi, nearest, 1.0),
    )

    rows = []
    for method, values in zip(METHODS, (rq, srq, dropbits)):
        for p, point in enumerate(x.tolist()):
            error, bias, variance = (float(v[p]) for v in values)
            rows.append(Estimate(point, method, error, bias, variance))
    return rows


def _one_hot(k: torch.Tensor, lo: int, size: int) -> torch.Tensor:
    return F.one_hot((k - lo).long(), size).to(torch.float64)


def _estimator_variance(
    r: torch.Tensor, pi: torch.Tensor, nearest: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``sum_j Var[dr_i / dpi_j]`` over the sample dimension 0 for ``j in {i - 1, i}``."""
    i = nearest[None, :, None].expand(r.shape[0], -1, 1)
    r_i = r.gather(-1, i)
    total = torch.zeros(pi.shape[0], dtype=r.dtype)
    for j in (i - 1, i):
        r_j, pi_j = r.gather(-1, j), pi.gather(-1, j[0])
        derivative = ((j == i) * r_i - r_i * r_j) / (temperature * pi_j)
        total += derivative.var(dim=0).squeeze(-1)
    return total


def format_table(rows: list[Estimate]) -> str:
    """One line per x, one column per metric and method."""
    points = sorted({row.x for row in rows})
    by_key = {(row.x, row.method): row for row in rows}
    short = {"RQ": "RQ", "SRQ": "SRQ", "SRQ+DropBits": "SRQ+DB"}
    header = f"{'x/alpha':>8}" + "".join(
        f"  {metric[:5]}:{short[m]:<7}" for metric in METRICS for m in METHODS
    )
    lines = [header]
    for point in points:
        cells = (
            f"  {getattr(by_key[point, m], metric):13.4f}" for metric in METRICS for m in METHODS
        )
        lines.append(f"{point:8.1f}" + "".join(cells))
    return "\n".join(lines)


def save_plot(rows: list[Estimate], path: str) -> bool:
    """Figure 6's three panels; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.2))
    for ax, (metric, title) in zip(axes, METRICS.items()):
        for method in METHODS:
            mine = sorted((r.x, getattr(r, metric)) for r in rows if r.method == method)
            ax.plot([p for p, _ in mine], [v for _, v in mine], marker="o", label=method)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x / alpha")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The diagnostics' options, on ``parser`` (``lowbit diagnose`` and ``main``)."""
    parser.add_argument("--bits", type=int, default=3, help="weight grid bits, 2-8 (default 3)")
    parser.add_argument(
        "--sigma", type=float, default=1 / 3, help="in units of alpha (default 1/3)"
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="RQ's tau (default 1)")
    parser.add_argument(
        "--keep", type=float, default=0.9, help="DropBits keep probability Pi (default 0.9)"
    )
    parser.add_argument(
        "--samples", type=int, default=20000, help="Monte Carlo draws (default 20000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--plot", metavar="FILE", help="save the three panels to this image")
    parser.add_argument(
        "--gradient-bias", metavar="FILE",
        help="also save SRQ Fig. 8 (App. B): the x-gradient bias of SRQ, SRQ+DropBits and RQ "
        "against the exact gradient, at the same settings (lowbit.analysis.gradient_bias)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the Figure 6 table for the options of ``add_arguments``; save the plot if asked."""
    rows = estimate(args.bits, args.sigma, args.temperature, args.keep, args.samples, args.seed)
    print(
        f"SRQ Fig. 6, {args.bits}-bit grid, alpha=1, sigma={args.sigma:.3g}, "
        f"tau={args.temperature:g}, Pi={args.keep:g}, {args.samples} samples"
    )
    print(format_table(rows))
    if args.plot:
        if save_plot(rows, args.plot):
            print(f"plot saved to {args.plot}")
        else:
            print("matplotlib is not installed (pip install 'lowbit[plot]'); no plot saved")
    if args.gradient_bias:
        from lowbit.analysis.gradient_bias import gradient_bias
        from lowbit.analysis.plots import plot_gradient_bias

        points = gradient_bias(args.bits, args.sigma, args.temperature, args.keep,
                               min(args.samples, GRADIENT_BIAS_SAMPLES), args.seed)
        plot_gradient_bias(points, args.gradient_bias)
        print(f"Fig. 8 saved to {args.gradient_bias}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lowbit.analysis.relaxed_diagnostics``, the same as ``lowbit diagnose``."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
