"""SRQ Fig. 8 (App. B): the bias of the gradient with respect to ``x`` of SRQ's multi-class
straight-through estimator, of SRQ + DropBits and of RQ, against the exact gradient.

App. B compares "the bias of gradient with respect to x as a proxy" for that with respect to
pi. Here the loss is the quantized value itself, ``L = x_hat`` (any linear loss scales every
curve alike), and the exact gradient is that of its expectation under the grid categorical
of Eq. 1, ``d/dx sum_k g_k r_k(x)`` with ``r = pi / sum(pi)`` (every cell of width alpha,
Algorithm 1). Each estimator is the ``x`` gradient of lowbit's own operator, averaged over
its randomness:

* SRQ (Eq. 3): ``dL/dr_imax = dL/dy_imax = g_imax``, so ``g_imax dr_imax/dx``; deterministic;
* SRQ + DropBits: the same with ``r = Z pi / sum(Z pi)``, over hard-concrete masks ``Z``
  (Eq. 4) of keep probability ``keep``, bitwise design;
* RQ (Eq. 2): the pathwise gradient of ``alpha sum_k r_k k`` through the Gumbel-softmax at
  temperature ``tau``, over the Gumbel noise.

The setting is SRQ §3.4's, ``alpha = 1``, ``sigma = alpha / 3`` by default; x runs over the
whole grid and half a cell beyond it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.errors import LowbitError
from lowbit.quant.dropbits import NO_MASK, hard_concrete_sample, mask_count, mask_runs
from lowbit.quant.logistic_grid import grid_bounds
from lowbit.quant.rq import log_cell_probability, relaxed_quantize
from lowbit.quant.srq import semi_relaxed_quantize

METHODS = ("SRQ", "SRQ+DropBits", "RQ")
# Positions of x per grid cell.
POINTS_PER_CELL = 8


@dataclass(frozen=True)
class BiasPoint:
    """One estimator at one x (units of alpha): its mean gradient, the exact one, and the
    difference."""

    x: float
    method: str
    estimate: float
    exact: float

    @property
    def bias(self) -> float:
        return self.estimate - self.exact


def exact_gradient(x: torch.Tensor, bits: int, sigma: float) -> torch.Tensor:
    """``d/dx E[x_hat]`` under ``r = pi / sum(pi)`` of Eq. 1 on the signed ``bits``-bit
    grid, ``alpha = 1`` (float64, by autograd of the expectation)."""
    lo, hi = grid_bounds(bits, signed=True)
    grid = torch.arange(lo, hi + 1, dtype=torch.float64)
    x = x.detach().double().requires_grad_(True)
    log_pi = log_cell_probability(x[:, None], grid, torch.tensor(1.0, dtype=torch.float64),
                                  torch.tensor(sigma, dtype=torch.float64))
    expectation = (torch.softmax(log_pi, dim=-1) * grid).sum()
    (gradient,) = torch.autograd.grad(expectation, x)
    return gradient


def _operator_gradient(quantize, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    quantize(x).sum().backward()
    return x.grad.double()


def gradient_bias(
    bits: int = 3,
    sigma: float = 1 / 3,
    temperature: float = 1.0,
    keep: float = 0.9,
    samples: int = 500,
    seed: int = 0,
) -> list[BiasPoint]:
    """Fig. 8's curves: every estimator of ``METHODS`` at x from half a cell below the grid
    to half a cell above it, ``POINTS_PER_CELL`` per cell."""
    if not (2 <= bits <= 8 and sigma > 0 and temperature > 0 and 0 < keep < 1 and samples > 0):
        raise LowbitError(
            "the gradient bias needs 2 <= bits <= 8, sigma > 0, temperature > 0, "
            "0 < keep < 1 and samples > 0"
        )
    generator = torch.Generator().manual_seed(seed)
    lo, hi = grid_bounds(bits, signed=True)
    cells = hi - lo + 1
    x = torch.linspace(lo - 0.5, hi + 0.5, cells * POINTS_PER_CELL + 1)
    alpha, scale = torch.tensor(1.0), torch.tensor(float(sigma))
    full_grid = [(lo, hi, NO_MASK)]
    estimates = {"SRQ": _operator_gradient(
        lambda v: semi_relaxed_quantize(v, alpha, scale, full_grid), x
    )}
    logits = torch.full((samples, mask_count(bits)), math.log(keep / (1 - keep)))
    runs = mask_runs(bits)
    estimates["SRQ+DropBits"] = torch.stack([
        _operator_gradient(lambda v, z=gates: semi_relaxed_quantize(v, alpha, scale, runs, z), x)
        for gates in hard_concrete_sample(logits, generator)
    ]).mean(0)
    estimates["RQ"] = torch.stack([
        _operator_gradient(
            lambda v: relaxed_quantize(v, alpha, scale, lo, hi, temperature,
                                       generator=generator), x
        )
        for _ in range(samples)
    ]).mean(0)
    exact = exact_gradient(x, bits, sigma)
    return [
        BiasPoint(float(point), method, float(estimates[method][i]), float(exact[i]))
        for method in METHODS
        for i, point in enumerate(x.tolist())
    ]
