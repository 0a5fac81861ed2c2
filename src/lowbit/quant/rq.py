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
from lowbit.quant.logistic_grid import LogisticGrid, in_layout_of, round_to_grid
from lowbit.quant.noise import counter_gumbels, element_counters
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


def _window_size(alpha: torch.Tensor, sigma: torch.Tensor, lo: int, hi: int, delta: float) -> int:
    """``K = 2 ceil(delta sigma / alpha + 1/2) + 1`` grid points (fewer if the grid is smaller):
    every point within ``delta`` sigmas of x lies in its window."""
    half = math.ceil(delta * abs(float(sigma / alpha)) + 0.5)
    return min(2 * half + 1, hi - lo + 1)


def _window_start(
    x: torch.Tensor, alpha: torch.Tensor, size: int, lo: int, hi: int
) -> torch.Tensor:
    """First grid integer of each element's window: ``size`` consecutive points around
    ``round(x / alpha)``, shifted to stay inside the grid."""
    return torch.floor(x / alpha + 0.5).sub_(size // 2).clamp_(lo, hi - size + 1)


@torch.no_grad()
def local_window(
    x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, lo: int, hi: int, delta: float
) -> torch.Tensor:
    """The grid integers RQ samples over, shape ``x.shape + (K,)`` (``_window_size``)."""
    size = _window_size(alpha, sigma, lo, hi, delta)
    start = _window_start(x, alpha, size, lo, hi)
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

    Differentiable in ``x``, ``alpha`` and ``sigma`` (RQ's own gradient: that of autograd
    through Eq. 1-2). One operator, ``lowbit::rq_quantize``: the noise is counter-based
    (``noise.py``) from one seed taken from ``generator``, so the operator is deterministic
    given it, and on float32 CPU tensors the fused kernels draw the same numbers and compute
    the same sampling and gradients without the ``numel x K`` tensors.
    """
    # A tensor, not a Python int: reading it would break a compiled graph.
    seed = torch.randint(0, 2**63 - 1, (), generator=generator)
    return rq_quantize(x, alpha, sigma, lo, hi, float(temperature), float(delta), seed)


def _sample(
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    lo: int,
    hi: int,
    temperature: float,
    delta: float,
    seed: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The local window ``k``, its cells' edges ``u = (alpha (k + 1/2) - x) / sigma`` and
    ``v = u - alpha / sigma``, and Eq. 2's Gumbel-softmax weights ``r``, each of shape
    ``(K,) + x.shape``: with the window's points leading, every sum over them is a few
    elementwise adds (a softmax over a short last dimension costs several times more)."""
    size = _window_size(alpha, sigma, lo, hi, delta)
    points = torch.arange(size, dtype=x.dtype, device=x.device).view(size, *[1] * x.dim())
    k = _window_start(x, alpha, size, lo, hi) + points
    upper = (alpha * (k + 0.5) - x) / sigma
    lower = upper - alpha / sigma
    gumbel = counter_gumbels(seed, element_counters(x), size).movedim(-1, 0)
    # log pi_k (Eq. 1) without its term shared by every k, which the softmax drops.
    logits = F.logsigmoid(upper).add_(F.logsigmoid(-lower)).add_(gumbel).div_(temperature)
    weights = logits.sub_(logits.amax(0)).exp_()
    return k, upper, lower, weights.div_(weights.sum(0))


def rq_formula(
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    lo: int,
    hi: int,
    temperature: float,
    delta: float,
    seed: torch.Tensor,
) -> torch.Tensor:
    """``lowbit::rq_quantize`` on any device: Eq. 2 with the noise of ``seed``."""
    k, _, _, r = _sample(x, alpha, sigma, lo, hi, temperature, delta, seed)
    return in_layout_of(x, (r * k).sum(0).mul_(alpha))


def rq_backward_formula(
    grad: torch.Tensor,
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    lo: int,
    hi: int,
    temperature: float,
    delta: float,
    seed: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``lowbit::rq_backward`` on any device: the gradients of Eq. 1-2 in ``x``, ``alpha`` and
    ``sigma``, the sampling redrawn from ``seed`` rather than stored.

    With ``m = sum_k r_k k``, ``dL/dlog pi_k = G alpha c_k / tau``, ``c_k = r_k (k - m)``; the
    cell edges ``u`` and ``v`` (``_sample``) give ``d log pi_k = S(-u) du - S(v) dv`` (the
    term of Eq. 1 shared by every k drops out: ``sum_k c_k = 0``). So with ``g = G alpha /
    (tau sigma)``: ``dL/dx = g sum_k c_k (S(v) - S(-u))``, ``dL/dalpha = sum G m + sum g
    sum_k c_k (S(-u) (k + 1/2) - S(v) (k - 1/2))`` and ``dL/dsigma = sum g sum_k c_k (S(v) v
    - S(-u) u)``.
    """
    k, upper, lower, r = _sample(x, alpha, sigma, lo, hi, temperature, delta, seed)
    m = (r * k).sum(0)
    c = (k - m).mul_(r)
    s_upper, s_lower = torch.sigmoid(upper.neg()), torch.sigmoid(lower)
    per_x = (s_lower - s_upper).mul_(c).sum(0)
    per_alpha = (s_upper * (k + 0.5)).sub_(s_lower * (k - 0.5)).mul_(c).sum(0)
    per_sigma = (s_lower * lower).sub_(s_upper * upper).mul_(c).sum(0)
    g = grad * (alpha / (temperature * sigma))
    grad_alpha = (grad * m).add_(g * per_alpha).sum().reshape(alpha.shape)
    grad_sigma = (g * per_sigma).sum().reshape(sigma.shape)
    return in_layout_of(x, g * per_x), grad_alpha, grad_sigma


rq_quantize = torch.library.custom_op("lowbit::rq_quantize", rq_formula, mutates_args=())
rq_backward = torch.library.custom_op("lowbit::rq_backward", rq_backward_formula, mutates_args=())


@rq_quantize.register_kernel("cpu")
def _rq_cpu(x, alpha, sigma, lo, hi, temperature, delta, seed):
    if not native.serves(x):
        return rq_formula(x, alpha, sigma, lo, hi, temperature, delta, seed)
    size = _window_size(alpha, sigma, lo, hi, delta)
    out, _ = native.rq(x, None, float(alpha), float(sigma), temperature, lo, hi, size, int(seed))
    return out


@rq_backward.register_kernel("cpu")
def _rq_backward_cpu(grad, x, alpha, sigma, lo, hi, temperature, delta, seed):
    """The fused kernel regenerates the forward's noise from its seed: nothing of size
    ``numel x K`` is stored or built."""
    if not native.serves(x):
        return rq_backward_formula(grad, x, alpha, sigma, lo, hi, temperature, delta, seed)
    size = _window_size(alpha, sigma, lo, hi, delta)
    settings = (float(alpha), float(sigma), temperature, lo, hi, size, int(seed))
    grad_x, (sum_alpha, sum_sigma) = native.rq(x, in_layout_of(x, grad), *settings)
    grad_alpha = torch.full(alpha.shape, sum_alpha, dtype=alpha.dtype)
    grad_sigma = torch.full(sigma.shape, sum_sigma, dtype=sigma.dtype)
    return grad_x, grad_alpha, grad_sigma


@rq_quantize.register_fake
def _(x, alpha, sigma, lo, hi, temperature, delta, seed):
    return torch.empty_like(x)


@rq_backward.register_fake
def _(grad, x, alpha, sigma, lo, hi, temperature, delta, seed):
    return torch.empty_like(x), alpha.new_empty(alpha.shape), sigma.new_empty(sigma.shape)


def _save_for_rq_backward(ctx, inputs, output):
    x, alpha, sigma, lo, hi, temperature, delta, seed = inputs
    ctx.settings = (lo, hi, temperature, delta)
    ctx.save_for_backward(x, alpha, sigma, seed)


def _rq_gradients(ctx, grad):
    x, alpha, sigma, seed = ctx.saved_tensors
    grads = rq_backward(grad, x, alpha, sigma, *ctx.settings, seed)
    return *grads, None, None, None, None, None


rq_quantize.register_autograd(_rq_gradients, setup_context=_save_for_rq_backward)


class RQQuantizer(LogisticGrid):
    """Relaxed Quantization (Algorithm 2 in training, Algorithm 3 in evaluation), on the signed
    grid ``alpha [-2^(b-1), 2^(b-1)-1]`` or (``signed=False``) ``alpha [0, 2^b-1]``.

    ``temperature`` is the Gumbel-softmax tau (default 1.0). ``anneal=True`` uses App. F's
    ``tau = max(0.5, c exp(-t / 1e5))``, updated every 1000 iterations, ``c = temperature``
    or by default 1 at 3 bits and 2 at 4 bits (1 otherwise); t counts training forwards in
    the ``step`` buffer, so a resumed run continues the schedule. ``ternary=True``: the 2-bit
    weight grid ``alpha {-1, 0, 1}``.
    """

    def __init__(
        self,
        bits: int,
        signed: bool = True,
        alpha: float | None = None,
        temperature: float | None = None,
        anneal: bool = False,
        delta: float = 3.0,
        ternary: bool = False,
    ) -> None:
        super().__init__(bits, signed, alpha, ternary)
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

    def training_state(self) -> dict[str, torch.Tensor]:
        """Alpha, sigma and the temperature of the next training forward."""
        state = super().training_state()
        return {**state, "temperature": torch.tensor(self.temperature())} if state else state

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


