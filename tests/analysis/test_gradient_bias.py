"""SRQ Fig. 8 (App. B): the x-gradient bias of SRQ's multi-class straight-through estimator,
SRQ + DropBits and RQ, against the exact gradient; references written from Eq. 1 and Eq. 3."""

from __future__ import annotations

import math

import pytest

from lowbit.analysis.gradient_bias import METHODS, gradient_bias

BITS, SIGMA = 3, 1 / 3
LO, HI = -(2 ** (BITS - 1)), 2 ** (BITS - 1) - 1


def _categorical(x: float) -> list[float]:
    """``r_k = pi_k / sum_j pi_j`` with Eq. 1's ``pi_k = S((k + 1/2 - x) / sigma) -
    S((k - 1/2 - x) / sigma)`` on the grid ``k = LO .. HI`` (alpha = 1, every cell of width
    alpha: Algorithm 1 lines 6-8)."""
    def s(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    pi = [s((k + 0.5 - x) / SIGMA) - s((k - 0.5 - x) / SIGMA) for k in range(LO, HI + 1)]
    return [p / sum(pi) for p in pi]


def _derivative(f, x: float, h: float = 1e-5) -> float:
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.fixture(scope="module")
def points():
    return gradient_bias(BITS, SIGMA, samples=2, keep=0.999999)


def test_exact_gradient_is_that_of_the_expected_grid_point(points):
    exact = {p.x: p.exact for p in points if p.method == "SRQ"}
    for x in (-3.375, -1.0, 0.25, 2.125):
        expected = _derivative(lambda v: sum(k * r for k, r in
                                             zip(range(LO, HI + 1), _categorical(v))), x)
        assert exact[x] == pytest.approx(expected, rel=1e-6)


def test_srq_estimate_is_eq3_straight_through(points):
    """Eq. 3: dL/dr_imax = dL/dy_imax, which for L = x_hat is the grid point g_imax; so the
    x gradient is g_imax dr_imax/dx, imax the mode of r (the nearest grid point)."""
    srq = {p.x: p for p in points if p.method == "SRQ"}
    for x in (-4.25, -1.875, -0.375, 0.625, 1.5 + 0.125, 3.375):
        k = min(max(math.floor(x + 0.5), LO), HI)
        expected = k * _derivative(lambda v, k=k: _categorical(v)[k - LO], x)
        assert srq[x].estimate == pytest.approx(expected, rel=1e-3, abs=1e-4)
        assert srq[x].bias == pytest.approx(srq[x].estimate - srq[x].exact)


def test_dropbits_keeping_every_level_is_srq(points):
    """Masks that keep every level (Pi -> 1) leave r = pi / sum(pi): SRQ's estimator."""
    srq = {p.x: p.estimate for p in points if p.method == "SRQ"}
    dropbits = {p.x: p.estimate for p in points if p.method == "SRQ+DropBits"}
    assert dropbits == pytest.approx(srq, abs=1e-6)


def test_every_method_covers_the_grid_and_half_a_cell_beyond(points):
    for method in METHODS:
        xs = sorted(p.x for p in points if p.method == method)
        assert xs[0] == LO - 0.5 and xs[-1] == HI + 0.5
        assert all(math.isfinite(p.bias) for p in points if p.method == method)


def test_diagnose_saves_fig8(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    from lowbit.cli import main

    path = tmp_path / "fig8.png"
    assert main(["diagnose", "--bits", "2", "--samples", "20", "--gradient-bias", str(path)]) == 0
    assert path.read_bytes().startswith(b"\x89PNG") and "Fig. 8 saved" in capsys.readouterr().out
