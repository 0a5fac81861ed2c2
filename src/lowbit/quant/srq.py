"""Semi-Relaxed Quantization (SRQ, seed 004 §3.1-3.2, Algorithm 1), with DropBits masks.

SRQ puts ``x`` on the grid of Eq. 1 (``lowbit.quant.logistic_grid``) at the mode of the cell
probabilities, with a multi-class straight-through gradient (Eq. 3). Nothing of size
``numel x 2^b`` is ever built:

* Every cell has the same width and the logistic density is symmetric and unimodal, so
  ``pi_k`` falls as ``|alpha k - x|`` grows: the mode of ``pi`` is the nearest grid point,
  ``clamp(floor(x / alpha + 1/2), lo, hi)``. SRQ without masks evaluates no probability in
  its forward pass.
* With DropBits the scores are ``Z_g pi_k``, one gate ``Z_g`` per group of grid points. Inside
  a run of consecutive points sharing a gate the best point is again the run's point nearest
  to x, so the mode is one of one candidate per run (``b`` bits, bitwise masks: ``2b - 2``
  candidates), scored elementwise with a running maximum.
* SRQ's straight-through gradient (Eq. 3) goes through ``r_imax = Z pi_imax / sum_j Z_j pi_j``;
  the cells tile the grid, so the sum telescopes over each run of points sharing a gate: a
  difference of two sigmoids per run and element (``srq_backward_formula``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.errors import LowbitError, require_positive
from lowbit.quant import native
from lowbit.quant.dropbits import NO_MASK, DropBitsMasks, Run, mask_runs
from lowbit.quant.gumbel_ste import gumbel_multiclass_quantize
from lowbit.quant.logistic_grid import LogisticGrid, in_layout_of
from lowbit.quant.precision import float32_compute


@torch.no_grad()
def srq_argmax(
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    runs: list[Run],
    log_gates: torch.Tensor | None = None,
) -> torch.Tensor:
    """SRQ's ``i_max = argmax_k Z_k pi_k`` (Eq. 3, Algorithm 1) as grid integers (x's dtype).

    ``runs`` partition the grid into ``(first, last, group)`` runs sharing a gate
    (``lowbit.quant.dropbits.mask_runs``; one ``(lo, hi, NO_MASK)`` run without masks);
    ``log_gates[g]`` is ``log Z_g`` and may carry extra dimensions that broadcast against
    ``x`` (one mask sample per row in ``lowbit.analysis.relaxed_diagnostics``).
    """
    nearest = x.div(alpha).add_(0.5).floor_()
    if len(runs) == 1:
        return nearest.clamp_(runs[0][0], runs[0][1])
    best_k = best = None
    for first, last, group in runs:
        k = nearest.clamp(first, last)
        # log pi_k up to the term log(1 - e^(-alpha/sigma)) shared by every k.
        upper = k.add(0.5).mul_(alpha).sub_(x).div_(sigma)
        score = F.logsigmoid(upper)
        score += F.logsigmoid(upper.sub_(alpha / sigma).neg_())
        del upper
        if group != NO_MASK:
            score = score + log_gates[group]
        if best is None:
            best_k, best = k, score
        else:
            take = score >= best  # later runs hold larger points: ties go up
            best_k = torch.where(take, k, best_k)
            best = torch.where(take, score, best)
    return best_k


# How SRQ's training forward picks a grid point: the mode (Eq. 3) or App. E's Gumbel sample.
SAMPLINGS = ("mode", "gumbel")
# Elements per step of the eager SRQ backward: its ~20 temporaries stay a few MiB however large
# the tensor (the forward saves x and one-byte grid indices only).
SRQ_CHUNK = 1 << 18
# exp of at most this in the gates' gradient: a dropped level's mass over the chosen point's
# (e^(rho distance)) passes float32's range when x sits far out on a dropped level (8 bits).
LOG_RATIO_CAP = 60.0


def _index_dtype(runs: list[int]) -> torch.dtype:
    """The grid integers' dtype: one byte where the grid ``[runs[0], runs[-2]]`` fits."""
    return torch.int8 if runs[0] >= -128 and runs[-2] <= 127 else torch.int16


def _grid_runs(runs: list[int]) -> list[Run]:
    return list(zip(runs[0::3], runs[1::3], runs[2::3]))


def srq_formula(
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    gates: torch.Tensor | None,
    runs: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lowbit::srq_quantize`` on any device: SRQ's forward ``alpha * k_max`` (Eq. 3) and
    ``k_max`` in one or two bytes for the backward pass; ``runs`` are ``srq_argmax``'s,
    flattened to ``first, last, group, first, ...``."""
    log_gates = None if gates is None else gates.log()
    k = srq_argmax(x, alpha, sigma, _grid_runs(runs), log_gates)
    return in_layout_of(x, k * alpha), in_layout_of(x, k.to(_index_dtype(runs)))


def srq_backward_formula(
    grad: torch.Tensor,
    x: torch.Tensor,
    k_int: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    gates: torch.Tensor | None,
    runs: list[int],
    want_gates: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``lowbit::srq_backward`` on any device: the gradients of ``x``, ``alpha``, ``sigma``
    and (with ``want_gates``, else zeros; empty without gates) the gates under SRQ's
    multi-class straight-through estimator (Eq. 3), in chunks of ``SRQ_CHUNK`` elements.

    Eq. 3: "Forward: y = one_hot[argmax_i r_i], Backward: dL/dr_imax = dL/dy_imax and
    dL/dr_i = 0 for i != imax", with ``r_i = Z_i pi_i / sum_j Z_j pi_j`` (Algorithm 1 lines
    11-14; ``Z = 1`` without masks, line 14). The mode of ``r`` is that of ``Z pi``, so the
    forward never forms ``r``. With ``G = dL/dx_hat``, ``x_hat = alpha k`` and ``m = imax``:
    ``dL/dx = G alpha k dr_m/dx``, ``dL/dsigma = sum G alpha k dr_m/dsigma``,
    ``dL/dalpha = sum G k + sum G alpha k dr_m/dalpha`` (the grid scales with alpha) and
    ``dL/dZ_g = sum G alpha k dr_m/dZ_g`` (numerator and denominator).

    ``dr_m = r_m (d log pi_m - d log D)``, ``D = sum_j Z_j pi_j``. Cells tile the grid (every
    point's cell has width alpha, end cells included: see ``cell_mass``), so ``D`` telescopes
    within each run of points sharing a gate: ``D = sum_j Z_j mass_j`` over runs ``j``,
    ``mass_j = S(U_j) - S(L_j)`` with ``U_j = (alpha (last_j + 1/2) - x) / sigma`` and
    ``L_j = (alpha (first_j - 1/2) - x) / sigma``: O(runs) sigmoids per element (one interval
    without masks), nothing of size ``numel x 2^b``. For an interval with edges ``u``, ``l``
    let ``p = S'(u) / mass`` and ``q = S'(l) / mass`` (``cell_mass``), so that
    ``sigma d log mass`` is ``q - p`` in x, ``p u_k - q l_k`` in alpha (``u_k``, ``l_k`` the
    edges in grid units) and ``q l - p u`` in sigma, with ``q - p = S(u) + S(l) - 1``. With
    ``w_j = Z_j mass_j / D`` (summing to 1), the chosen cell's edges ``a``, ``b`` and its
    ``p_c``, ``q_c``, ``Delta = sum_j w_j ((S(b) - S(L_j)) - (S(U_j) - S(a)))`` and
    ``B = sum_j w_j (p_j (last_j - k) + q_j (k - first_j))``, writing ``U_j = a + (last_j - k)
    rho`` and ``L_j = b - (k - first_j) rho`` (``rho = alpha / sigma``), ``sigma d log r_m`` is

    * x: ``Delta``,
    * alpha: ``-k Delta + (p_c + q_c - sum_j w_j (p_j + q_j)) / 2 - B``,
    * sigma: ``a Delta - rho (q_c - sum_j w_j q_j) + rho B``.

    No two large terms cancel there: each difference of sigmoids in ``Delta`` is taken in the
    tail where both are small, so far outside the grid (where the x gradient vanishes and
    those of alpha and sigma tend to constants) ``Delta`` is tiny and exact, and inside it the
    terms of the grid's edges are tiny. Weights are computed relative to the chosen point's
    score ``Z_m pi_m``, the largest cell score, so each run's is at most its length and
    ``1 / r_m = sum_j Z_j mass_j / (Z_m pi_m)``. The gates: ``dr_m / dZ_g = r_m ([g = g_m] /
    Z_m - r_m mass_g / (Z_m pi_m))``.
    """
    grid_runs = _grid_runs(runs)
    if grad.shape != x.shape or not grad.is_contiguous():
        grad = grad.expand_as(x).contiguous()
    flat_x, flat_g, flat_k = x.reshape(-1), grad.reshape(-1), k_int.reshape(-1)
    grad_x = torch.empty_like(flat_x)
    totals = x.new_zeros(3)  # sum G k, the alpha terms, the sigma terms
    grad_gates = x.new_empty(0) if gates is None else torch.zeros_like(gates)
    for start in range(0, flat_x.numel(), SRQ_CHUNK):
        part = slice(start, start + SRQ_CHUNK)
        grad_x[part], sums, gate_part = _srq_chunk_gradients(
            flat_g[part], flat_x[part], flat_k[part], alpha, sigma, grid_runs, gates, want_gates
        )
        totals += sums
        if gate_part is not None:
            grad_gates += gate_part
    grad_alpha = (totals[0] + totals[1]).reshape(alpha.shape)
    grad_sigma = totals[2].clone().reshape(sigma.shape)  # not a view, as the fake kernel's
    return in_layout_of(x, grad_x.view(x.shape)), grad_alpha, grad_sigma, grad_gates


srq_quantize = torch.library.custom_op(
    "lowbit::srq_quantize", srq_formula, mutates_args=()
)
srq_backward = torch.library.custom_op(
    "lowbit::srq_backward", srq_backward_formula, mutates_args=()
)


@srq_quantize.register_kernel("cpu")
def _srq_cpu(x, alpha, sigma, gates, runs):
    if gates is not None or not native.serves(x):
        return srq_formula(x, alpha, sigma, gates, runs)
    # The same rounding in one pass.
    return native.srq_round(x, float(alpha), runs[0], runs[-2], _index_dtype(runs))


@srq_backward.register_kernel("cpu")
def _srq_backward_cpu(grad, x, k_int, alpha, sigma, gates, runs, want_gates):
    """The eager formulas in one pass (without masks, or with them)."""
    if not native.serves(x):
        return srq_backward_formula(grad, x, k_int, alpha, sigma, gates, runs, want_gates)
    grad = in_layout_of(x, grad)
    settings = (float(alpha), float(sigma))
    if gates is None:
        grad_x, (sum_gk, sum_alpha, sum_sigma) = native.srq_backward(
            grad, x, k_int, *settings, runs[0], runs[-2]
        )
        grad_gates = x.new_empty(0)
    else:
        grad_x, (sum_gk, sum_alpha, sum_sigma), gate_sums = native.srq_masked_backward(
            grad, x, k_int, *settings, _grid_runs(runs), gates.tolist(), want_gates
        )
        grad_gates = gates.new_tensor(gate_sums) if want_gates else torch.zeros_like(gates)
    grad_alpha = alpha.new_tensor(sum_gk + sum_alpha).reshape(alpha.shape)
    grad_sigma = sigma.new_tensor(sum_sigma).reshape(sigma.shape)
    return grad_x, grad_alpha, grad_sigma, grad_gates


@srq_quantize.register_fake
def _(x, alpha, sigma, gates, runs):
    return torch.empty_like(x), torch.empty_like(x, dtype=_index_dtype(runs))


@srq_backward.register_fake
def _(grad, x, k_int, alpha, sigma, gates, runs, want_gates):
    grad_gates = x.new_empty(0) if gates is None else gates.new_empty(gates.shape)
    scales = alpha.new_empty(alpha.shape), sigma.new_empty(sigma.shape)
    return torch.empty_like(x), *scales, grad_gates


def _save_for_srq_backward(ctx, inputs, output):
    x, alpha, sigma, gates, runs = inputs
    ctx.runs = runs
    ctx.set_materialize_grads(False)  # no zero tensor for the grid integers' gradient
    ctx.save_for_backward(x, output[1], alpha, sigma, gates)


def _srq_gradients(ctx, grad, _):
    x, k_int, alpha, sigma, gates = ctx.saved_tensors
    want_gates = gates is not None and ctx.needs_input_grad[3]
    grad_x, grad_alpha, grad_sigma, grad_gates = srq_backward(
        grad, x, k_int, alpha, sigma, gates, ctx.runs, want_gates
    )
    return grad_x, grad_alpha, grad_sigma, grad_gates if want_gates else None, None


srq_quantize.register_autograd(_srq_gradients, setup_context=_save_for_srq_backward)


def cell_mass(
    upper: torch.Tensor, lower: torch.Tensor, width: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``log(S(upper) - S(lower))`` for ``upper - lower = width`` (Eq. 1 over one cell, or
    summed over a run of cells) and the slopes ``S'(upper) / (S(upper) - S(lower))`` and
    ``S'(lower) / (S(upper) - S(lower))``, stable far from x:
    ``S(u) - S(l) = S(u) S(-l) (1 - e^(-width))``, so the slopes are ``S(-u) / (S(-l)
    (1 - e^(-width)))`` and ``S(l) / (S(u) (1 - e^(-width)))``, at most
    ``1 / (1 - e^(-width))``.

    Algorithm 1 lines 6-8 shift the grid by ``-alpha/2``, ``F = S((I - x) / sigma)`` and
    ``pi_i = F[i+1] - F[i]`` for ``i = 0 .. 2^b - 1``: ``F[2^b]`` is the shifted grid's next
    point, ``g_last + alpha/2``. So every cell, the end cells included, is Eq. 1's
    ``[g_i - alpha/2, g_i + alpha/2]`` (not RQ's open end cells that reach to +-infinity,
    under which ``sum pi = 1`` and Algorithm 1's normalization, line 14, would do nothing),
    and ``sum_j pi_j = S((alpha (hi + 1/2) - x) / sigma) - S((alpha (lo - 1/2) - x) / sigma)``.
    """
    log_fill = torch.log(-torch.expm1(-width))
    log_upper, log_not_lower = F.logsigmoid(upper), F.logsigmoid(-lower)
    slope_upper = F.logsigmoid(-upper).sub_(log_not_lower).sub_(log_fill).exp_()
    slope_lower = F.logsigmoid(lower).sub_(log_upper).sub_(log_fill).exp_()
    return log_upper.add_(log_not_lower).add_(log_fill), slope_upper, slope_lower


def sigmoid_difference(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``S(p) - S(q)``, taken as ``S(-q) - S(-p)`` where both are near 1."""
    return torch.where(
        p + q > 0, torch.sigmoid(-q) - torch.sigmoid(-p), torch.sigmoid(p) - torch.sigmoid(q)
    )


def _srq_chunk_gradients(
    grad: torch.Tensor,
    x: torch.Tensor,
    k_int: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    runs: list[Run],
    gates: torch.Tensor | None,
    want_gates: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """SRQ's backward on flat ``x`` (``srq_backward_formula`` has the formulas): ``dL/dx``,
    ``(sum G k, sum G alpha k dr/dalpha, sum G alpha k dr/dsigma)`` and the gates' gradient
    (``None`` unless ``want_gates``)."""
    ratio = alpha / sigma
    k = k_int.to(x.dtype)
    # (alpha (point + 1/2) - x) / sigma as (point rho + rho/2) + (-x / sigma): the same float
    # operations for a cell's edges and a run's, so the top cell's upper edge is the grid's.
    offset = x.div(sigma).neg_()
    half = ratio / 2

    def upper_edge(point):
        return (point * ratio + half) + offset

    upper = upper_edge(k)
    lower = upper - ratio
    log_pi, cell_up, cell_low = cell_mass(upper, lower, ratio)
    if gates is not None:
        point_gate, index = _point_gates(gates, runs, k_int)
        log_selected = log_pi + point_gate.log().index_select(0, index)
    else:
        log_selected = log_pi
    del log_pi
    # Sums over runs of w_j (unnormalized: D / (Z_m pi_m)), w_j Delta_j, w_j p_j, w_j q_j and
    # w_j (p_j (last_j - k) + q_j (k - first_j)).
    total, delta, up_sum, low_sum, spread = (torch.zeros_like(x) for _ in range(5))
    for first, last, group in runs:
        run_upper, run_lower = upper_edge(float(last)), upper_edge(float(first)).sub_(ratio)
        log_mass, up, low = cell_mass(run_upper, run_lower, ratio * (last - first + 1))
        weight = log_mass.sub_(log_selected)
        if group != NO_MASK:
            weight += gates[group].log()
        weight = weight.exp_()  # Z_j mass_j / (Z_m pi_m)
        run_delta = sigmoid_difference(lower, run_lower).sub_(sigmoid_difference(run_upper, upper))
        total += weight
        delta.addcmul_(weight, run_delta)
        up_sum.addcmul_(weight, up)
        low_sum.addcmul_(weight, low)
        spread.addcmul_(weight, (up * (last - k)).add_(low * (k - first)))
        del log_mass, up, low, run_upper, run_lower, weight, run_delta
    r = total.reciprocal_()
    delta.mul_(r)
    c = grad * k * ratio  # G alpha k / sigma
    cr = c * r
    grad_x = delta * cr
    alpha_terms = ((cell_up + cell_low) - (up_sum + low_sum).mul_(r)).div_(2)
    alpha_terms.sub_(delta * k).sub_(spread * r)
    sigma_terms = (cell_low - low_sum * r).sub_(spread * r).mul_(-ratio).addcmul_(upper, delta)
    sums = torch.stack([(grad * k).sum(), cr.dot(alpha_terms), cr.dot(sigma_terms)])
    if not want_gates:
        return grad_x, sums, None
    # dr_m/dZ_g = r_m ([g = g_m] / Z_m - r_m mass_g / (Z_m pi_m)), times G alpha k = c sigma.
    crs = cr * sigma
    inverse_gate = torch.where(point_gate > 0, point_gate.reciprocal(), 0.0)
    own = crs * inverse_gate.index_select(0, index)
    grad_gates = _group_sums(torch.zeros_like(point_gate).index_add_(0, index, own), gates, runs)
    crs.mul_(r)
    for first, last, group in runs:
        if group == NO_MASK:
            continue
        run_upper, run_lower = upper_edge(float(last)), upper_edge(float(first)).sub_(ratio)
        log_mass, _, _ = cell_mass(run_upper, run_lower, ratio * (last - first + 1))
        relative = log_mass.sub_(log_selected).clamp_(max=LOG_RATIO_CAP).exp_()
        grad_gates[group] -= crs.dot(relative)
    return grad_x, sums, grad_gates


def _point_gates(
    gates: torch.Tensor, runs: list[Run], k_int: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate of every grid point (1 where unmasked) and each element's index into it."""
    lo = runs[0][0]
    point_gate = torch.ones(runs[-1][1] - lo + 1, dtype=gates.dtype, device=gates.device)
    for first, last, group in runs:
        if group != NO_MASK:
            point_gate[first - lo : last - lo + 1] = gates[group]
    index = k_int.reshape(-1).to(torch.int32).sub_(lo)
    return point_gate, index


def _group_sums(grad_points: torch.Tensor, gates: torch.Tensor, runs: list[Run]) -> torch.Tensor:
    lo = runs[0][0]
    grad_gates = torch.zeros_like(gates)
    for first, last, group in runs:
        if group != NO_MASK:
            grad_gates[group] += grad_points[first - lo : last - lo + 1].sum()
    return grad_gates


@float32_compute
def semi_relaxed_quantize(
    x: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    runs: list[Run],
    gates: torch.Tensor | None = None,
) -> torch.Tensor:
    """SRQ (Eq. 3): the mode of ``Z pi / sum(Z pi)`` on the grid ``alpha * k``, with the
    multi-class straight-through gradient through ``r_imax`` into ``x``, ``alpha``, ``sigma``
    and the gates (``srq_backward_formula``). One operator, ``lowbit::srq_quantize``, with
    ``lowbit::srq_backward``: on float32 CPU tensors the fused kernels compute both passes.

    ``runs`` as in ``srq_argmax``; ``gates`` (one per mask group, from
    ``DropBitsMasks.gates``) is ``None`` without DropBits. Without masks the forward equals
    ``round_to_grid``.
    """
    dtype = x.dtype
    gates = None if gates is None else gates.to(dtype)
    flat_runs = [value for run in runs for value in run]
    return srq_quantize(x, alpha.to(dtype), sigma.to(dtype), gates, flat_runs)[0]



class SRQQuantizer(LogisticGrid):
    """Semi-Relaxed Quantization, optionally with DropBits masks (Algorithm 1).

    ``masks="bitwise"`` or ``"endpoints"`` adds one ``DropBitsMasks`` child (weights only);
    ``l0_lambda > 0`` learns the bit-width (§3.5, regularized for the first ``l0_fraction``
    of training). The masks module carries the training hooks (``regularization_loss``,
    ``set_progress``). Evaluation is deterministic: Algorithm 1's DEPLOYMENT,
    ``clamp(alpha round(x / alpha))`` on the full grid, unless bits are learned; then the
    nearest grid point whose level is kept (``DropBitsMasks.alive``).

    ``signed`` picks the grid: ``alpha [-2^(b-1), 2^(b-1)-1]`` (weights, or layer inputs that
    take negative values) or ``alpha [0, 2^b-1]`` (inputs after a ReLU, §3.1); ``ternary=True``
    the 2-bit weight grid ``alpha {-1, 0, 1}`` (Table 3's "T"), whose points DropBits never
    masks (§3.3), so it has no masks.

    ``sampling="gumbel"`` trains with App. E's ablation instead of the mode: a hard
    Gumbel-softmax sample at ``temperature`` (Eq. 2) with the multi-class straight-through
    gradient (Eq. 3; ``lowbit.quant.gumbel_ste``), without masks.
    """

    def __init__(
        self,
        bits: int,
        signed: bool = True,
        alpha: float | None = None,
        masks: str | None = None,
        l0_lambda: float = 0.0,
        l0_fraction: float = 0.5,
        ternary: bool = False,
        sampling: str = "mode",
        temperature: float = 1.0,
    ) -> None:
        super().__init__(bits, signed, alpha, ternary)
        if sampling not in SAMPLINGS:
            raise LowbitError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        require_positive(temperature, "temperature")
        if ternary:
            masks = None  # only the never-masked points -1, 0, 1 are left
            if l0_lambda != 0:
                raise LowbitError(
                    "a ternary grid has no bit level to learn; drop l0_lambda for this layer"
                )
        if sampling == "gumbel" and masks is not None:
            raise LowbitError(
                "sampling='gumbel' (App. E) replaces DropBits' masks; use method srq, or "
                "set masks: null"
            )
        self.sampling, self.temperature = sampling, float(temperature)
        if masks is not None and not signed:
            raise LowbitError(
                "DropBits masks apply to weights only (signed grids); remove masks from the "
                "activation options"
            )
        if masks is None and l0_lambda != 0:
            raise LowbitError(
                "learned bit-widths (l0_lambda) need DropBits masks; set masks='bitwise'"
            )
        self.masks = None if masks is None else DropBitsMasks(bits, masks, l0_lambda, l0_fraction)
        self.runs = [(self.lo, self.hi, NO_MASK)] if masks is None else mask_runs(bits, masks)

    def grid_points(self) -> list[int]:
        """The grid integers evaluation rounds to: those whose DropBits level is kept."""
        return super().grid_points() if self.masks is None else self.masks.kept_points()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._start(x)
        if self.sampling == "gumbel" and self.training:
            return gumbel_multiclass_quantize(
                x, self.alpha.to(x.dtype), self.sigma.to(x.dtype), self.lo, self.hi,
                self.temperature,
            )
        if self.masks is None:
            return semi_relaxed_quantize(x, self.alpha, self.sigma, self.runs)
        gates = self.masks.gates()
        if not self.training and bool(gates.eq(1).all()):  # every level kept: the full grid
            return semi_relaxed_quantize(x, self.alpha, self.sigma, [(self.lo, self.hi, NO_MASK)])
        return semi_relaxed_quantize(x, self.alpha, self.sigma, self.runs, gates)

    def extra_repr(self) -> str:
        if self.sampling == "mode":
            return super().extra_repr()
        return f"{super().extra_repr()}, sampling={self.sampling}, temperature={self.temperature:g}"
