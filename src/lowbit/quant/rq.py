"""Relaxed Quantization (RQ, Louizos et al. 2019), the baseline of seed 004.

Training (Eq. 2, Algorithm 2) is a Gumbel-softmax over the cells of Eq. 1
(``lowbit.quant.logistic_grid``): RQ samples over a window of grid points around
``round(x / alpha)`` reaching ``delta`` sigmas past x (Louizos et al.: the mass beyond is
negligible), shifted to stay inside the grid: ``numel x (2 ceil(delta sigma / alpha + 1/2) + 1)``
values. Evaluation (Algorithm 3) rounds to the nearest grid point.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lowbit.errors import require_positive
from lowbit.quant import native
from lowbit.quant.logistic_grid import LogisticGrid, round_to_grid
from lowbit.quant.noise import counter_uniforms, element_counters
from lowbit.quant.precision import float32_compute

MIN_TEMPERATURE, ANNEAL_SCALE, ANNEAL_EVERY = 0.5, 1e5, 1000  # App. F annealing schedule
ANNEAL_START = {3: 1.0, 4: 2.0}  # App. F: c = 1 at 3 bits, 2 at 4 bits


def log_cell_probability(
    x: torch.Tensor, k: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """``log pi_k`` of Eq. 1, stable far from x: ``S(a) - S(b) = S(a) S(-b) (1 - e^(b-a))``."""
    upper = (alpha * (k + 0.5) - x) / sigma
    lower = upper - alpha / sigma
    return F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(-alpha / sigma))


@torch.no_grad()
def local_window(
    x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, lo: int, hi: int, delta: float
) -> torch.Tensor:
    """The grid integers RQ samples over, shape ``x.shape + (K,)``: every point within
    ``delta`` sigmas of x, ``K = 2 ceil(delta sigma / alpha + 1/2) + 1`` consecutive points
    around ``round(x / alpha)`` (fewer if the grid is smaller), shifted to stay inside it."""
    half = math.ceil(delta * abs(float(sigma / alpha)) + 0.5)
    size = min(2 * half + 1, hi - lo + 1)
    start = torch.floor(x / alpha + 0.5).sub_(size // 2).clamp_(lo, hi - size + 1)
    return start.unsqueeze(-1) + torch.arange(size, dtype=x.dtype, device=x.device)


@float32_compute
def relaxed_quantize(
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    lo: int,
    hi: int,
    temperature: float,
    delta: float = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RQ's training forward (Eq. 2): ``alpha * sum_k r_k k`` with
    ``r = softmax((log pi_k + u_k) / tau)``, ``u_k ~ Gumbel(0, 1)``, over the local window.

    Differentiable in ``x``, ``alpha`` and ``sigma`` by plain autograd (RQ's own gradient).
    The noise is counter-based (``noise.py``) from one seed taken from ``generator``: on
    float32 CPU tensors the fused kernels draw the same numbers, and compute the same sampling
    and gradients without the ``numel x K`` tensors.
    """
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    if native.usable(x):
        half = math.ceil(delta * abs(float(sigma.detach() / alpha.detach())) + 0.5)
        size = min(2 * half + 1, hi - lo + 1)
        return _RelaxedFused.apply(x, alpha, sigma, lo, hi, temperature, size, seed)
    k = local_window(x, alpha, sigma, lo, hi, delta)
    logits = log_cell_probability(x.unsqueeze(-1), k, alpha, sigma)
    uniforms = counter_uniforms(seed, element_counters(x), k.shape[-1])
    gumbel = uniforms.log_().neg_().log_().neg_()
    r = torch.softmax((logits + gumbel) / temperature, dim=-1)
    return alpha * (r * k).sum(-1)


class _RelaxedFused(torch.autograd.Function):
    """``relaxed_quantize`` in the fused CPU kernels (``lowbit.quant.native.rq``): the
    backward pass regenerates the forward's Gumbel noise from its seed, so nothing of size
    ``numel x K`` is stored; its gradients are those of autograd through Eq. 1-2."""

    @staticmethod
    def forward(ctx, x, alpha, sigma, lo, hi, temperature, size, seed):
        settings = (float(alpha), float(sigma), temperature, lo, hi, size, seed)
        out, _ = native.rq(x, None, *settings)
        ctx.settings = settings
        ctx.save_for_backward(x, alpha, sigma)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, alpha, sigma = ctx.saved_tensors
        if grad_out.stride() != x.stride():
            grad_out = torch.empty_like(x).copy_(grad_out)
        grad_x, (sum_alpha, sum_sigma) = native.rq(x, grad_out, *ctx.settings)
        grad_alpha = torch.full(alpha.shape, sum_alpha, dtype=alpha.dtype)
        grad_sigma = torch.full(sigma.shape, sum_sigma, dtype=sigma.dtype)
        return grad_x, grad_alpha, grad_sigma, None, None, None, None, None



class RQQuantizer(LogisticGrid):
    """Relaxed Quantization (Algorithm 2 in training, Algorithm 3 in evaluation), on the signed
    grid ``alpha [-2^(b-1), 2^(b-1)-1]`` or (``signed=False``) ``alpha [0, 2^b-1]``.

    ``temperature`` is the Gumbel-softmax tau (default 1.0). ``anneal=True`` uses App. F's
    ``tau = max(0.5, c exp(-t / 1e5))``, updated every 1000 iterations, ``c = temperature``
    or by default 1 at 3 bits and 2 at 4 bits (1 otherwise); t counts training forwards in
    the ``step`` buffer, so a resumed run continues the schedule.
    """

    def __init__(
        self,
        bits: int,
        signed: bool = True,
        alpha: float | None = None,
        temperature: float | None = None,
        anneal: bool = False,
        delta: float = 3.0,
    ) -> None:
        super().__init__(bits, signed, alpha)
        if temperature is not None:
            require_positive(temperature, "temperature")
        require_positive(delta, "delta (window half-width in sigmas)")
        default = ANNEAL_START.get(bits, 1.0) if anneal else 1.0
        self.start_temperature = default if temperature is None else float(temperature)
        self.anneal, self.delta = anneal, delta
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def temperature(self) -> float:
        """The Gumbel-softmax temperature of the next training forward."""
        if not self.anneal:
            return self.start_temperature
        t = int(self.step) // ANNEAL_EVERY * ANNEAL_EVERY
        return max(MIN_TEMPERATURE, self.start_temperature * math.exp(-t / ANNEAL_SCALE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._start(x)
        if not self.training:
            return round_to_grid(x, self.alpha.to(x.dtype), self.lo, self.hi)
        tau = self.temperature()
        self.step += 1
        return relaxed_quantize(
            x, self.alpha.to(x.dtype), self.sigma.to(x.dtype), self.lo, self.hi, tau, self.delta
        )

    def extra_repr(self) -> str:
        anneal = ", anneal" if self.anneal else ""
        return f"{super().extra_repr()}, temperature={self.start_temperature:g}{anneal}"


