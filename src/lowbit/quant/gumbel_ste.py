"""Gumbel-softmax + multi-class straight-through: the ablation of seed 004's Appendix E.

App. E compares SRQ + DropBits with "an algorithm using the Gumbel-Softmax STE in the forward
pass instead of DropBits and our multi-class STE in the backward pass". Read with Eq. 2 and
Eq. 3, that is, for every element ``x`` on the grid ``g_i = alpha k_i`` of Eq. 1:

* forward: a sample of RQ's concrete distribution, ``r = softmax((log pi + u) / tau)``,
  ``u_i ~ Gumbel(0, 1)`` (Eq. 2), made hard: ``y = one_hot(argmax_i r_i)``, ``x_hat = sum_i
  y_i g_i = g_imax`` (the Gumbel-softmax straight-through forward of Jang et al.; the stochastic
  choice DropBits' masks otherwise give SRQ);
* backward: SRQ's multi-class straight-through estimator (Eq. 3) through that ``r``:
  ``dL/dr_imax = dL/dy_imax`` and ``dL/dr_i = 0`` for ``i != imax``, so with ``G = dL/dx_hat``:
  ``dL/dx = G g_imax dr_imax/dx``, ``dL/dsigma = G g_imax dr_imax/dsigma`` and
  ``dL/dalpha = G k_imax + G g_imax dr_imax/dalpha`` (the grid scales with alpha, as in SRQ).

As in RQ (``lowbit.quant.rq``), the categorical is taken over the grid points within
``delta`` sigmas of ``round(x / alpha)`` (the mass beyond is negligible). The formula is plain
autograd on ``x.numel() x K`` values (K = 5 at the initial ``sigma = alpha / 3``): an ablation
for small models, without a fused kernel. Evaluation rounds to the grid (Algorithm 1
DEPLOYMENT), as SRQ does.
"""

from __future__ import annotations

import torch

from lowbit.quant.noise import counter_gumbels, element_counters
from lowbit.quant.precision import float32_compute
from lowbit.quant.rq import local_window, log_cell_probability


def gumbel_multiclass_formula(
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    points: torch.Tensor,
    gumbel: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """``g_imax`` with the multi-class straight-through gradient through ``r_imax`` (App. E).

    ``points`` holds each element's candidate grid integers (shape ``x.shape + (K,)``) and
    ``gumbel`` the Gumbel(0, 1) noise of each (same shape). The straight-through estimator is
    the surrogate ``g_imax (1 + r_imax - r_imax.detach())``: its value is ``g_imax`` and its
    gradient ``G g_imax dr_imax`` plus the grid's own ``G k_imax dalpha`` (written as
    ``g + g (r - r.detach())``, whose value is exactly ``g``: ``(1 + r) - r`` may not be 1).
    """
    log_pi = log_cell_probability(x.unsqueeze(-1), points, alpha, sigma)
    r = torch.softmax((log_pi + gumbel) / temperature, dim=-1)  # Eq. 2
    chosen = r.argmax(dim=-1, keepdim=True)  # y = one_hot(argmax_i r_i)
    r_max = r.gather(-1, chosen).squeeze(-1)
    k = points.gather(-1, chosen).squeeze(-1)
    grid_point = alpha * k
    return grid_point + grid_point * (r_max - r_max.detach())


def gumbel_noise(x: torch.Tensor, slots: int) -> torch.Tensor:
    """Gumbel(0, 1) samples of shape ``x.shape + (slots,)`` from the counter-based source RQ
    uses (``lowbit.quant.noise``: the same numbers on every device) under one seed drawn from
    torch's generator."""
    seed = int(torch.randint(0, 2**63 - 1, ()))
    return counter_gumbels(seed, element_counters(x), slots, x.dtype)


@float32_compute
def gumbel_multiclass_quantize(
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    lo: int,
    hi: int,
    temperature: float,
    delta: float = 3.0,
) -> torch.Tensor:
    """App. E's training forward on the grid ``alpha [lo, hi]``: one Gumbel draw per element
    and candidate point (the window ``lowbit.quant.rq.local_window`` gives)."""
    points = local_window(x, alpha, sigma, lo, hi, delta)
    return gumbel_multiclass_formula(
        x, alpha, sigma, points, gumbel_noise(x, points.shape[-1]), temperature
    )
