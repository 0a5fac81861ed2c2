"""MSE-optimal step sizes (UniQ §4.2, Eq. 7-10, Table 1), LSQ's init and the SQNR."""

import math

import pytest
import torch

import lowbit
from lowbit.errors import LowbitError
from lowbit.quant.init import (
    distortion,
    distortion_slope,
    lsq_step,
    mse_activation_step,
    mse_weight_step,
    optimal_sqnr_db,
    optimal_step_size,
    sqnr_db,
)
from lowbit.quant.uniq import code_range, learned_step_quantize

# UniQ Table 1: N -> (step_w^u, SQNR_w dB, step_a^u, SQNR_a dB), as printed.
TABLE_1 = {
    2: ("1.596", "4.4", "1.224", "5.5"),
    4: ("0.996", "9.3", "0.651", "11.6"),
    8: ("0.586", "14.3", "0.353", "17.2"),
    16: ("0.335", "19.4", "0.193", "22.7"),
}
# The unit steps the UniQ authors use for b = 1..8 (REFERENCE-FACTS.md), to 4 decimals.
AUTHORS_WEIGHT = [1.5958, 0.9957, 0.5860, 0.3352, 0.1881, 0.1041, 0.0569, 0.0308]
AUTHORS_ACTIVATION = [1.2240, 0.6508, 0.3534, 0.1932, 0.1055, 0.0573, 0.0309, 0.0165]


@pytest.mark.parametrize("n", sorted(TABLE_1))
def test_table_1_step_sizes_from_eq8(n):
    """Table 1: step^u solving Eq. 8 = 0, to the printed three decimals."""
    weight, _, activation, _ = TABLE_1[n]
    assert f"{optimal_step_size(n, 'weight'):.3f}" == weight
    assert f"{optimal_step_size(n, 'activation'):.3f}" == activation


@pytest.mark.parametrize("n", sorted(TABLE_1))
def test_table_1_sqnr_is_variance_over_mse(n):
    """Table 1 SQNR columns: 10 log10(Var[X] / E[(X - Q(X))^2]) at the optimal step, X a unit
    Gaussian (weights) or a ReLU'd unit Gaussian (activations), to the printed 0.1 dB."""
    _, weight, _, activation = TABLE_1[n]
    assert f"{optimal_sqnr_db(n, 'weight'):.1f}" == weight
    assert f"{optimal_sqnr_db(n, 'activation'):.1f}" == activation


def test_second_moment_as_signal_would_not_reproduce_table_1():
    """The convention matters: E[X^2] = 1/2 as the activation signal gives 7.2 dB, not 5.5."""
    noise = distortion(optimal_step_size(2, "activation"), 2, "activation")
    assert f"{10 * math.log10(0.5 / noise):.1f}" == "7.2"


@pytest.mark.parametrize("bits", range(1, 9))
def test_steps_match_the_authors_constants(bits):
    n = 2**bits
    assert optimal_step_size(n, "weight") == pytest.approx(AUTHORS_WEIGHT[bits - 1], abs=6e-5)
    assert optimal_step_size(n, "activation") == pytest.approx(
        AUTHORS_ACTIVATION[bits - 1], abs=6e-5
    )


def test_two_level_steps_have_closed_forms():
    """N = 2: weights +-step/2 with step/2 = E|X| = sqrt(2/pi); activations {0, step} with
    step = E[X | X > step/2] (the centroid condition Eq. 8 reduces to)."""
    assert optimal_step_size(2, "weight") == pytest.approx(2 * math.sqrt(2 / math.pi), rel=1e-12)
    step = optimal_step_size(2, "activation")
    t = torch.tensor(step / 2, dtype=torch.float64)
    centroid = torch.exp(-t * t / 2) / math.sqrt(2 * math.pi) / (1 - torch.special.ndtr(t))
    assert float(centroid) == pytest.approx(step, rel=1e-10)


@pytest.mark.parametrize("kind", ["weight", "activation"])
@pytest.mark.parametrize("n", [2, 3, 5, 16, 100, 255, 256])
def test_solution_is_a_minimum_of_the_distortion(kind, n):
    """Eq. 7: the root of Eq. 8 minimizes D, for every N up to 256 (odd N too)."""
    step = optimal_step_size(n, kind)
    assert abs(distortion_slope(step, n, kind)) < 1e-9
    best = distortion(step, n, kind)
    assert best < distortion(step * 0.99, n, kind)
    assert best < distortion(step * 1.01, n, kind)


def test_eq8_slope_matches_finite_differences():
    for kind in ("weight", "activation"):
        for step in (0.2, 0.7, 1.5):
            h = 1e-6
            numeric = (distortion(step + h, 8, kind) - distortion(step - h, 8, kind)) / (2 * h)
            assert distortion_slope(step, 8, kind) == pytest.approx(numeric, rel=1e-5)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_quantizer_on_samples_reaches_the_optimal_sqnr(bits):
    """The real quantizers at step^u on 10^6 samples measure Table 1's SQNR (sqnr_db)."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1_000_000, generator=gen, dtype=torch.float64)
    n = 2**bits
    q_min, q_max = code_range("symmetric", bits)
    step = torch.tensor(optimal_step_size(n, "weight"), dtype=torch.float64)
    w_hat = learned_step_quantize(z, step, q_min, q_max, symmetric=True)
    assert sqnr_db(z, w_hat) == pytest.approx(optimal_sqnr_db(n, "weight"), abs=0.03)

    a = z.relu()
    q_min, q_max = code_range("unsigned", bits)
    step = torch.tensor(optimal_step_size(n, "activation"), dtype=torch.float64)
    a_hat = learned_step_quantize(a, step, q_min, q_max)
    assert sqnr_db(a, a_hat) == pytest.approx(optimal_sqnr_db(n, "activation"), abs=0.03)


@pytest.mark.parametrize("n_levels", [1, 257, 2.0, True])
def test_bad_level_counts_are_user_errors(n_levels):
    with pytest.raises(LowbitError, match="n_levels"):
        optimal_step_size(n_levels, "weight")


def test_bad_kind_is_a_user_error():
    with pytest.raises(LowbitError, match="kind"):
        optimal_step_size(4, "bias")


def test_public_api_exports_optimal_step_size():
    assert lowbit.optimal_step_size(4, kind="activation") == optimal_step_size(4, "activation")


def test_eq9_weight_step_is_per_channel_std():
    """Eq. 9: step = step_w^u * Std(W), one per output channel when kernel-wise."""
    w = torch.randn(3, 4, 3, 3) * torch.tensor([0.1, 1.0, 5.0]).view(3, 1, 1, 1)
    unit = optimal_step_size(4, "weight")
    per_channel = mse_weight_step(w, 4, per_channel=True)
    assert per_channel.shape == (3,)
    torch.testing.assert_close(per_channel, unit * w.reshape(3, -1).std(dim=1, correction=0))
    torch.testing.assert_close(mse_weight_step(w, 4, per_channel=False), unit * w.std(correction=0))


def test_eq10_activation_step_recovers_the_pre_activation_std():
    """Eq. 10: sqrt(2 E[X^2]) of ReLU(N(0, sigma^2)) is sigma, so step = step_a^u * sigma."""
    x = (torch.randn(200_000, generator=torch.Generator().manual_seed(1)) * 3.0).relu()
    expected = optimal_step_size(8, "activation") * 3.0
    assert float(mse_activation_step(x, 8)) == pytest.approx(expected, rel=0.01)


def test_lsq_init_is_two_mean_abs_over_sqrt_qp():
    x = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    assert float(lsq_step(x, q_p=4)) == pytest.approx(2 * 1.25 / 2)
    torch.testing.assert_close(lsq_step(x, q_p=1, per_channel=True), torch.tensor([4.0, 1.0]))


def test_sqnr_of_a_known_error():
    x = torch.tensor([1.0, -1.0, 1.0, -1.0])
    assert sqnr_db(x, x * 0.9) == pytest.approx(20.0)  # Var 1, noise 0.01
