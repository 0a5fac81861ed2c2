"""RQ and SRQ (SRQ paper §3.1-3.2, Appendix G): forward values, Eq. 3 gradients, memory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.errors import LowbitError
from lowbit.nn.calibrate import calibrate
from lowbit.quant.dropbits import NO_MASK, mask_count, mask_groups, mask_runs
from lowbit.quant.logistic_grid import grid_bounds, round_to_grid
from lowbit.quant.noise import counter_uniforms
from lowbit.quant.rq import RQQuantizer, local_window, log_cell_probability, relaxed_quantize
from lowbit.quant.srq import SRQQuantizer, semi_relaxed_quantize, srq_argmax

F64 = torch.float64


def full_grid_pi(x, alpha, sigma, lo, hi):
    """Eq. 1 over every grid point, straight from the sigmoid CDF differences."""
    k = torch.arange(lo, hi + 1, dtype=x.dtype)
    g = alpha * k
    return torch.sigmoid((g + alpha / 2 - x[..., None]) / sigma) - torch.sigmoid(
        (g - alpha / 2 - x[..., None]) / sigma
    )


def test_grid_bounds_section_3_1():
    """Weights alpha[-2^(b-1) .. 2^(b-1)-1], activations alpha[0 .. 2^b-1] (§3.1, App. G)."""
    assert grid_bounds(2, True) == (-2, 1)
    assert grid_bounds(3, True) == (-4, 3)
    assert grid_bounds(4, False) == (0, 15)


def test_log_cell_probability_is_eq1():
    x = torch.linspace(-3, 3, 101, dtype=F64)
    alpha, sigma = torch.tensor(0.7, dtype=F64), torch.tensor(0.25, dtype=F64)
    k = torch.arange(-4, 4, dtype=F64)
    expected = full_grid_pi(x, alpha, sigma, -4, 3)
    got = log_cell_probability(x[:, None], k, alpha, sigma).exp()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("bits,signed", [(2, True), (3, True), (4, True), (3, False), (8, True)])
def test_mode_of_eq1_is_the_nearest_grid_point(bits, signed):
    """argmax_i pi_i over the whole grid = clamp(round(x / alpha)): the one candidate SRQ
    evaluates without masks."""
    torch.manual_seed(bits)
    lo, hi = grid_bounds(bits, signed)
    alpha, sigma = torch.tensor(0.3, dtype=F64), torch.tensor(0.4, dtype=F64)
    x = torch.empty(4000, dtype=F64).uniform_((lo - 3) * 0.3, (hi + 3) * 0.3)
    mode = full_grid_pi(x, alpha, sigma, lo, hi).argmax(-1) + lo
    k = srq_argmax(x, alpha, sigma, [(lo, hi, NO_MASK)])
    assert torch.equal(k.long(), mode)


@pytest.mark.parametrize("bits,signed", [(2, True), (3, True), (4, True), (2, False), (4, False)])
def test_srq_forward_without_masks_is_clamped_rounding_eq3(bits, signed):
    torch.manual_seed(0)
    q = SRQQuantizer(bits, signed=signed, alpha=0.05)
    x = torch.randn(10000) * 0.2
    expected = (torch.round(x / 0.05).clamp(*grid_bounds(bits, signed))) * 0.05
    torch.testing.assert_close(q(x), expected, rtol=0, atol=1e-7)
    q.eval()
    torch.testing.assert_close(q(x), expected, rtol=0, atol=1e-7)


def paper_srq(x, alpha, sigma, lo, hi, point_gate=None, normalized=True):
    """Algorithm 1 lines 6-17 over the FULL grid, with explicit [n, 2^b] tensors:

        6: I = G - alpha/2 (and the next shifted point, g_last + alpha/2)
        7: F = Sigmoid((I - x) / sigma)
        8: pi_i = F[i + 1] - F[i] for i = 0, ..., 2^b - 1
        11: pi~ = pi Z   12: r_i = pi~_i / sum_j pi~_j   (14: r_i = pi_i / sum_j pi_j)
        16: y = one_hot[argmax_i r_i]   17: x_hat = y G

    with Eq. 3's multi-class straight-through estimator "dL/dr_imax = dL/dy_imax and
    dL/dr_i = 0 for i != imax": y_imax + y_imax (r_imax - r_imax.detach()).
    ``normalized=False`` takes it through pi~_imax instead (lowbit's old gradient)."""
    k = torch.arange(lo, hi + 1, dtype=x.dtype)
    edges = alpha * (torch.arange(lo, hi + 2, dtype=x.dtype) - 0.5)
    cdf = torch.sigmoid((edges - x[:, None]) / sigma)
    pi = cdf[:, 1:] - cdf[:, :-1]
    # The same difference taken from the upper tail, 1 - F, where F is near 1 (cells above x).
    upper_tail = torch.sigmoid((x[:, None] - edges) / sigma)
    pi = torch.where(alpha * k > x[:, None], upper_tail[:, :-1] - upper_tail[:, 1:], pi)
    score = pi if point_gate is None else pi * point_gate
    r = score / score.sum(-1, keepdim=True) if normalized else score
    y = F.one_hot(score.detach().argmax(-1), hi - lo + 1).to(x.dtype)
    y = y + y * (r - r.detach())
    return (y * alpha * k).sum(-1)


def gate_per_point(gates, bits, design):
    groups = torch.tensor(mask_groups(bits, design))
    return torch.where(groups == NO_MASK, 1.0, gates[..., groups.clamp(min=0)])


def srq_case(bits, signed, design, dtype, n=400, seed=0):
    """Random x over the grid and 3 steps past its ends, G, alpha, sigma (and gates, one of
    them 0: a dropped level); the lowbit SRQ's and the full-grid reference's gradients."""
    generator = torch.Generator().manual_seed(seed)
    lo, hi = grid_bounds(bits, signed)
    alpha, sigma = torch.tensor(0.3, dtype=F64), torch.tensor(0.11, dtype=F64)
    x = torch.rand(n, generator=generator, dtype=F64) * (hi - lo + 6) + lo - 3
    x = x * alpha
    G = torch.randn(n, generator=generator, dtype=F64)
    gates = None
    if design is not None:
        gates = torch.rand(mask_count(bits, design), generator=generator, dtype=F64) * 0.9 + 0.1
        gates[-1] = 0.0
    # float32 values, so that both sides see the same x, alpha, sigma and gates.
    leaves = [t.float().double() for t in (x, alpha, sigma, gates) if t is not None]
    runs = [(lo, hi, NO_MASK)] if design is None else mask_runs(bits, design)

    ours = [t.to(dtype).requires_grad_() for t in leaves]
    out = semi_relaxed_quantize(ours[0], ours[1], ours[2], runs, *ours[3:])
    got = torch.autograd.grad(out, ours, G.to(dtype))

    # The reference's parameters repeated per element, so that each element's share of the
    # scale and gate gradients is seen: their sums are the gradients, the sums of their
    # magnitudes the scale float32 rounding works at (the alpha gradient cancels).
    refs = [leaves[0].clone().requires_grad_()] + [
        t.expand(n, *t.shape).clone().requires_grad_() for t in leaves[1:]
    ]
    alpha_n, sigma_n = refs[1][:, None], refs[2][:, None]
    point_gate = None if design is None else gate_per_point(refs[3], bits, design)
    reference = paper_srq(refs[0], alpha_n, sigma_n, lo, hi, point_gate)
    torch.testing.assert_close(out.double(), reference.detach(), rtol=1e-6, atol=1e-7)
    shares = torch.autograd.grad(reference, refs, G)
    want = [shares[0]] + [share.sum(0) for share in shares[1:]]
    scales = [shares[0].abs().max()] + [share.abs().sum(0).max() for share in shares[1:]]
    return [g.double() for g in got], want, scales


SRQ_CASES = [
    (2, True, None), (3, True, None), (4, True, None), (2, False, None), (4, False, None),
    (8, False, None), (2, True, "bitwise"), (3, True, "bitwise"), (4, True, "bitwise"),
    (3, True, "endpoints"), (4, True, "endpoints"),
]


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("bits,signed,design", SRQ_CASES)
def test_srq_gradients_are_eq3_through_normalized_r(bits, signed, design, dtype):
    """Eq. 3 (Algorithm 1 lines 11-16): "Backward: dL/dr_imax = dL/dy_imax", with
    r = Z pi / sum_j Z_j pi_j over the whole grid. x, alpha, sigma and gate gradients equal
    autograd of the explicit full-grid reference, signed and unsigned, with and without
    DropBits masks; float32 runs the CPU kernels (no masks) on the native path."""
    got, want, scales = srq_case(bits, signed, design, dtype)
    # float32: the edges (alpha (k + 1/2) - x) / sigma hold k alpha / sigma to 6e-8 relative,
    # 1e-4 of a cell at 8 bits.
    tolerance = 1e-9 if dtype == F64 else 1e-4
    for g, w, scale in zip(got, want, scales):
        torch.testing.assert_close(g, w, rtol=tolerance, atol=tolerance * scale.item())


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_srq_gradient_differs_from_the_unnormalized_z_pi_estimator(dtype):
    """Eq. 3 is taken through r_imax = pi_imax / sum_j pi_j, not through pi_imax (lowbit's old
    estimator): near the ends of a 2-bit grid the sum is far from 1 and the two differ by
    more than 10% in every gradient; lowbit's matches the normalized one."""
    lo, hi = grid_bounds(2, True)
    # float32 values, x on -2 and 1, near the grid's ends.
    x, alpha, sigma = (torch.tensor(v).double() for v in ([-0.47, 0.22, 0.41], 0.3, 0.11))
    G = torch.tensor([1.0, -0.5, 0.8], dtype=F64)
    results = []
    for fn, precision in (
        (lambda x, a, s: semi_relaxed_quantize(x, a, s, [(lo, hi, NO_MASK)]), dtype),
        (lambda x, a, s: paper_srq(x, a, s, lo, hi), F64),
        (lambda x, a, s: paper_srq(x, a, s, lo, hi, normalized=False), F64),
    ):
        leaves = [t.to(precision).requires_grad_() for t in (x, alpha, sigma)]
        grads = torch.autograd.grad(fn(*leaves), leaves, G.to(precision))
        results.append([g.double() for g in grads])
    ours, paper, old = results
    tolerance = 1e-9 if dtype == F64 else 1e-5
    for g, p, o in zip(ours, paper, old):
        torch.testing.assert_close(g, p, rtol=tolerance, atol=1e-12)
        assert ((o - p).abs() > 0.1 * p.abs()).all()


def srq_gradients(x, G, sigma, dtype):
    leaves = [t.to(dtype).requires_grad_() for t in (x, torch.tensor(0.1), torch.tensor(sigma))]
    out = semi_relaxed_quantize(*leaves, [(-8, 7, NO_MASK)])
    return [g.double() for g in torch.autograd.grad(out, leaves, G.to(dtype))]


@pytest.mark.parametrize("sigma", [1e-3, 0.04, 100.0])
def test_srq_gradients_stay_finite_and_precise_far_outside_the_grid(sigma):
    """sum_j pi_j telescopes to S(U) - S(L) (Algorithm 1 line 8 summed); the gradients are
    taken as ratios to it, never forming it, so they stay finite 1e6 grid steps out and, up to
    1e4 steps out, match float64 (where the full-grid reference's sigmoid differences are 0/0:
    lowbit's own float64 path, which the test above ties to the reference)."""
    x = torch.tensor([-1e5, -1e3, -30.0, -0.77, -0.24, 0.0, 0.26, 0.68, 12.7, 30.0, 1e3, 1e5])
    G = torch.linspace(-1.0, 1.0, 12)
    got, want = srq_gradients(x, G, sigma, torch.float32), srq_gradients(x, G, sigma, F64)
    assert all(torch.isfinite(g).all() for g in got)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    inner = slice(1, -1)  # the scale gradients without the elements 1e6 steps out
    got = srq_gradients(x[inner], G[inner], sigma, torch.float32)
    want = srq_gradients(x[inner], G[inner], sigma, F64)
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-4)


def test_srq_memory_has_no_numel_by_grid_tensor():
    """Eq. 3 at 8 bits keeps O(numel) for backward: x and a one-byte grid index, not the
    [numel, 256] categorical (1 KiB per element)."""
    x = torch.randn(50_000, requires_grad=True)
    q = SRQQuantizer(8, masks="bitwise", alpha=0.01)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = q(x)
    out.sum().backward()
    assert sum(saved) <= 5.1 * x.numel()
    assert x.grad is not None and q.alpha.grad is not None and q.sigma.grad is not None


def test_rq_eval_is_algorithm3_rounding():
    q = RQQuantizer(3, alpha=0.1).eval()
    x = torch.randn(1000) * 0.3
    torch.testing.assert_close(q(x), torch.round(x / 0.1).clamp(-4, 3) * 0.1, rtol=0, atol=1e-7)


def test_rq_training_is_eq2_gumbel_softmax_over_the_grid():
    """With a window as wide as the grid, RQ is exactly Eq. 2 over the whole grid."""
    x = torch.randn(500, dtype=F64) * 0.3
    alpha, sigma = torch.tensor(0.1, dtype=F64), torch.tensor(0.05, dtype=F64)
    got = relaxed_quantize(
        x, alpha, sigma, -4, 3, 0.7, delta=100.0, generator=torch.Generator().manual_seed(3)
    )
    # The noise RQ draws: one seed from the generator, counter-based uniforms (quant/noise.py).
    seed = int(torch.randint(0, 2**63 - 1, (), generator=torch.Generator().manual_seed(3)))
    gumbel = -(-counter_uniforms(seed, torch.arange(500), 8).log()).log().double()
    pi = full_grid_pi(x, alpha, sigma, -4, 3)
    r = torch.softmax((pi.log() + gumbel) / 0.7, dim=-1)
    torch.testing.assert_close(got, (r * alpha * torch.arange(-4, 4, dtype=F64)).sum(-1))


def test_rq_local_window_holds_the_mass():
    """±3 sigma window (Louizos et al.): inside the grid, contains the nearest point, and
    carries all but 0.3% of the grid's probability."""
    torch.manual_seed(0)
    lo, hi = -8, 7
    alpha, sigma = torch.tensor(0.1), torch.tensor(0.1 / 3)
    x = torch.randn(5000) * 0.5
    k = local_window(x, alpha, sigma, lo, hi, 3.0)
    assert k.shape == (5000, 5)  # 2 ceil(3 * 1/3 + 1/2) + 1
    assert k.min() >= lo and k.max() <= hi
    nearest = torch.round(x / 0.1).clamp(lo, hi)
    assert ((k == nearest[:, None]).any(-1)).all()
    pi = full_grid_pi(x.double(), alpha.double(), sigma.double(), lo, hi)
    inside = pi.gather(-1, (k - lo).long()).sum(-1)
    assert (inside / pi.sum(-1)).min() > 1 - 3e-3


def test_rq_gradients_reach_x_alpha_sigma():
    q = RQQuantizer(4, alpha=0.05)
    x = (torch.randn(2000) * 0.2).requires_grad_()
    q(x).pow(2).sum().backward()
    for grad in (x.grad, q.alpha.grad, q.sigma.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("bits,start", [(3, 1.0), (4, 2.0)])
def test_rq_annealing_schedule_appendix_f(bits, start):
    """tau = max(0.5, c exp(-t / 1e5)), updated every 1000 iterations; resumable."""
    q = RQQuantizer(bits, alpha=0.1, anneal=True)
    assert q.temperature() == start
    q.step.fill_(999)
    assert q.temperature() == start
    q.step.fill_(1500)
    assert q.temperature() == pytest.approx(start * math.exp(-0.01))
    q.step.fill_(400_000)
    assert q.temperature() == 0.5
    q.step.fill_(2000)
    resumed = RQQuantizer(bits, alpha=0.1, anneal=True)
    resumed.load_state_dict(q.state_dict())
    assert resumed.temperature() == pytest.approx(start * math.exp(-0.02))
    resumed(torch.randn(10))
    assert int(resumed.step) == 2001
    assert RQQuantizer(bits, alpha=0.1).temperature() == 1.0


def test_observe_starts_alpha_from_data_lsq_rule():
    """alpha = 2 E|x| / sqrt(Q_P), sigma = alpha / 3; activations keep the running maximum."""
    q = SRQQuantizer(3, signed=False)
    a, b = torch.rand(1000), 3 * torch.rand(1000)
    q.observe(a)
    q.observe(b)
    q.observe(a)
    expected = 2 * b.abs().mean() / math.sqrt(7)
    torch.testing.assert_close(q.alpha.data, expected)
    torch.testing.assert_close(q.sigma.data, expected / 3)
    q.train()(a)  # training starts: calibration is over
    q.observe(10 * b)
    torch.testing.assert_close(q.alpha.data, expected)

    fixed = SRQQuantizer(3, alpha=0.25)
    fixed.observe(b)
    assert fixed.alpha.item() == 0.25
    loaded = SRQQuantizer(3)
    loaded.load_state_dict(fixed.state_dict())
    loaded(b)
    assert loaded.alpha.item() == 0.25


@pytest.mark.parametrize("method", ["rq", "srq", "srq-dropbits"])
@pytest.mark.parametrize("signed", [True, False])
def test_layer_input_quantizers_signed_and_unsigned_with_calibration(method, signed):
    """§3.1: grids alpha[-2^(b-1), ..., 2^(b-1)-1] for values of both signs (weights, and
    layer inputs that can be negative), alpha[0, ..., 2^b-1] after a ReLU. Calibration
    (``calibrate``, which calls ``observe`` before each batch) sets alpha to the running
    maximum of LSQ's 2 E|x| / sqrt(Q_P) and sigma = alpha / 3; evaluation is Algorithm 1
    DEPLOYMENT's (Algorithm 3 for RQ) clamp(alpha round(x / alpha)); training reaches alpha
    and sigma. Inputs never get DropBits masks."""
    torch.manual_seed(0)
    q = lowbit.get_method(method).input_quantizer(3, signed=signed)
    lo, hi = grid_bounds(3, signed)
    assert (q.lo, q.hi) == (lo, hi) and getattr(q, "masks", None) is None
    batches = [torch.randn(64, 8) * scale for scale in (1.0, 2.0, 0.5)]
    if not signed:
        batches = [x.relu() for x in batches]
    assert calibrate(q, batches, 3) == 3
    expected = max(2 * x.abs().mean() / math.sqrt(hi) for x in batches)
    torch.testing.assert_close(q.alpha.detach(), expected)
    torch.testing.assert_close(q.sigma.detach(), expected / 3)

    x = batches[1]
    alpha = q.alpha.detach()
    out = q.eval()(x)
    torch.testing.assert_close(out, round_to_grid(x, alpha, lo, hi), rtol=0, atol=1e-6)
    assert bool((out < 0).any()) == signed
    q.train()
    out = q(x)
    assert out.min() >= lo * alpha - 1e-5 and out.max() <= hi * alpha + 1e-5
    out.square().sum().backward()
    assert q.alpha.grad.abs() > 0 and q.sigma.grad is not None
    q.observe(10 * x)  # training started: calibration is over
    torch.testing.assert_close(q.alpha.detach(), expected)


def test_bad_options_raise_lowbit_error():
    with pytest.raises(LowbitError, match="weights only"):
        SRQQuantizer(3, signed=False, masks="bitwise")
    with pytest.raises(LowbitError, match="masks"):
        SRQQuantizer(3, l0_lambda=1e-3)
    with pytest.raises(LowbitError, match="bits"):
        SRQQuantizer(1)
    with pytest.raises(LowbitError, match="temperature"):
        RQQuantizer(3, temperature=0.0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(LowbitError, match="weights only"):
        lowbit.quantize(model, "srq-dropbits", 3, input_options={"masks": "bitwise"})


@pytest.mark.parametrize("method", ["rq", "srq", "srq-dropbits"])
def test_registered_methods_train_a_small_model(method):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )
    lowbit.quantize(model, method, 3, first_last_bits=3)
    x = torch.randn(32, 8)
    model(x).logsumexp(-1).mean().backward()
    quantizer = model[2].weight_quantizer
    assert model[2].weight.grad is not None and quantizer.alpha.grad is not None
    model.eval()
    with torch.no_grad():
        w = quantizer(model[2].weight)
    codes = w / quantizer.alpha
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-5)
