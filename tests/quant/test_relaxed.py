"""RQ and SRQ (SRQ paper §3.1-3.2, Appendix G): forward values, Eq. 3 gradients, memory."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import LowbitError
from lowbit.quant.dropbits import NO_MASK, mask_count, mask_groups, mask_runs
from lowbit.quant.relaxed import (
    RQQuantizer,
    SRQQuantizer,
    grid_bounds,
    local_window,
    log_cell_probability,
    relaxed_quantize,
    semi_relaxed_quantize,
    srq_argmax,
)

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


def test_srq_gradients_match_hand_derived_eq3():
    """Multi-class STE: dL/dr_imax = dL/dy_imax = G g_imax, through pi_imax only (§3.2):
    dpi/dx = (S(B)S(-B) - S(A)S(-A)) / sigma with A, B the cell's upper and lower edges."""
    torch.manual_seed(1)
    lo, hi = -4, 3
    x = torch.randn(40, dtype=F64) * 0.6
    x[0] = 2 * 0.3  # exactly on a grid point
    x.requires_grad_()
    alpha = torch.tensor(0.3, dtype=F64, requires_grad=True)
    sigma = torch.tensor(0.12, dtype=F64, requires_grad=True)
    G = torch.randn(40, dtype=F64)
    out = semi_relaxed_quantize(x, alpha, sigma, [(lo, hi, NO_MASK)])
    gx, ga, gs = torch.autograd.grad(out, (x, alpha, sigma), G)

    with torch.no_grad():
        a_, s_, xd = alpha.item(), sigma.item(), x.detach()
        k = torch.round(xd / a_).clamp(lo, hi)
        g = a_ * k
        A = (g + a_ / 2 - xd) / s_
        B = (g - a_ / 2 - xd) / s_
        dA, dB = torch.sigmoid(A) * torch.sigmoid(-A), torch.sigmoid(B) * torch.sigmoid(-B)
        dpi_dx = (dB - dA) / s_
        dpi_dalpha = (dA * (k + 0.5) - dB * (k - 0.5)) / s_
        dpi_dsigma = -(dA * A - dB * B) / s_
    torch.testing.assert_close(gx, G * g * dpi_dx)
    torch.testing.assert_close(ga, (G * k).sum() + (G * g * dpi_dalpha).sum())
    torch.testing.assert_close(gs, (G * g * dpi_dsigma).sum())
    # On its grid point the x gradient vanishes (§3.2: weights cluster on the grid); so
    # does every gradient into x of a weight at the zero point (dL/dy_imax = G g_imax = 0).
    assert abs(gx[0].item()) < 1e-12 < gx[1:][k[1:] != 0].abs().min().item()
    assert (gx[k == 0] == 0).all()


@pytest.mark.parametrize(
    "bits,design", [(2, "bitwise"), (3, "bitwise"), (4, "bitwise"), (3, "endpoints")]
)
def test_srq_dropbits_matches_full_grid_autograd_reference(bits, design):
    """With masks the forward is the argmax of Z pi over the whole grid and the backward
    is autograd through y_imax = Z pi_imax (straight-through), gates included."""
    torch.manual_seed(bits)
    lo, hi = grid_bounds(bits, True)
    x = (torch.randn(300, dtype=F64) * 0.3 * 2 ** (bits - 1)).requires_grad_()
    alpha = torch.tensor(0.3, dtype=F64, requires_grad=True)
    sigma = torch.tensor(0.35, dtype=F64, requires_grad=True)
    gates = torch.rand(mask_count(bits, design), dtype=F64)
    gates[0] = 0.0  # a dropped level
    gates.requires_grad_()
    G = torch.randn(300, dtype=F64)
    out = semi_relaxed_quantize(x, alpha, sigma, mask_runs(bits, design), gates)
    grads = torch.autograd.grad(out, (x, alpha, sigma, gates), G)

    groups = torch.tensor(mask_groups(bits, design))
    point_gate = torch.where(groups == NO_MASK, 1.0, gates[groups.clamp(min=0)])
    score = point_gate * full_grid_pi(x, alpha, sigma, lo, hi)
    imax = score.detach().argmax(-1, keepdim=True)
    chosen = score.gather(-1, imax)[:, 0]
    reference = (chosen - chosen.detach() + 1) * alpha * (imax[:, 0] + lo).to(F64)
    torch.testing.assert_close(out, reference.detach())
    expected = torch.autograd.grad(reference, (x, alpha, sigma, gates), G)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


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
    gumbel = torch.empty(500, 8, dtype=F64).exponential_(generator=torch.Generator().manual_seed(3))
    gumbel = -gumbel.log()
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
