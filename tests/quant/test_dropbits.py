"""DropBits masks (SRQ paper §3.3, Eq. 4, Figure 3) and learned bit-widths (§3.5)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import LowbitError
from lowbit.quant.dropbits import (
    DROPPED,
    GAMMA,
    KEPT,
    NO_MASK,
    TAU0,
    ZETA,
    DropBitsMasks,
    hard_concrete_sample,
    mask_groups,
    mask_runs,
    smoothed_l0,
)
from lowbit.quant.logistic_grid import round_to_grid
from lowbit.quant.srq import SRQQuantizer
from lowbit.train.hooks import learned_bits


def coverage(bits: int, design: str) -> dict[int, list[int]]:
    """Grid integers covered by each mask."""
    found: dict[int, list[int]] = {}
    for offset, group in enumerate(mask_groups(bits, design)):
        found.setdefault(group, []).append(offset - 2 ** (bits - 1))
    return found


def test_bitwise_masks_cover_bit_levels_figure_3b():
    assert coverage(2, "bitwise") == {0: [-2], NO_MASK: [-1, 0, 1]}
    assert coverage(3, "bitwise") == {1: [-4, -3, 2, 3], 0: [-2], NO_MASK: [-1, 0, 1]}
    assert coverage(4, "bitwise") == {
        2: [-8, -7, -6, -5, 4, 5, 6, 7],
        1: [-4, -3, 2, 3],
        0: [-2],
        NO_MASK: [-1, 0, 1],
    }


def test_endpoints_masks_pair_the_grid_ends_figure_3a():
    assert coverage(2, "endpoints") == {0: [-2], NO_MASK: [-1, 0, 1]}
    assert coverage(3, "endpoints") == {2: [-4, 3], 1: [-3, 2], 0: [-2], NO_MASK: [-1, 0, 1]}
    assert coverage(4, "endpoints") == {
        6: [-8, 7], 5: [-7, 6], 4: [-6, 5], 3: [-5, 4], 2: [-4, 3], 1: [-3, 2], 0: [-2],
        NO_MASK: [-1, 0, 1],
    }


@pytest.mark.parametrize(
    "bits,design",
    [(2, "bitwise"), (3, "bitwise"), (4, "bitwise"), (8, "bitwise"), (2, "endpoints"),
     (3, "endpoints"), (5, "endpoints")],
)
def test_middle_points_are_never_masked(bits, design):
    """Grid indices 2^(b-1)-1, 2^(b-1), 2^(b-1)+1 have no mask (§3.3); with every mask at 0
    SRQ still quantizes, to the ternary middle."""
    groups = mask_groups(bits, design)
    half = 2 ** (bits - 1)
    assert [i for i, g in enumerate(groups) if g == NO_MASK] == [half - 1, half, half + 1]
    runs = mask_runs(bits, design)
    assert runs[0][0] == -half and runs[-1][1] == half - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(runs, runs[1:]))

    q = SRQQuantizer(bits, alpha=0.1, masks=design)
    q.masks.fate.fill_(DROPPED)
    x = torch.randn(1000)
    out = q(x)
    torch.testing.assert_close(out, torch.round(x / 0.1).clamp(-1, 1) * 0.1, rtol=0, atol=1e-7)


def test_hard_concrete_eq4_puts_mass_on_exact_0_and_1():
    """Eq. 4 with zeta = 1.1, gamma = -0.1, tau_0 = 0.2: P(Z = 0) and P(Z = 1) in closed form."""
    torch.manual_seed(0)
    keep = 0.9
    logit = math.log(keep / (1 - keep))
    z = hard_concrete_sample(torch.full((400_000,), logit))
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    lg = lambda p: math.log(p / (1 - p))  # noqa: E731
    p_zero = sig(TAU0 * lg(-GAMMA / (ZETA - GAMMA)) - logit)
    p_one = 1 - sig(TAU0 * lg((1 - GAMMA) / (ZETA - GAMMA)) - logit)
    assert (z == 0).float().mean().item() == pytest.approx(p_zero, abs=2e-3)
    assert (z == 1).float().mean().item() == pytest.approx(p_one, abs=2e-3)
    assert z.min() >= 0 and z.max() <= 1
    # §3.5's smoothed L0 is exactly P(Z > 0).
    assert smoothed_l0(torch.tensor(logit)).item() == pytest.approx(1 - p_zero, rel=1e-6)


def test_keep_probabilities_start_near_0_9_section_f():
    torch.manual_seed(0)
    pi = torch.cat([DropBitsMasks(4).keep_probability().detach() for _ in range(300)])
    assert pi.mean().item() == pytest.approx(0.9, abs=2e-3)
    assert pi.std().item() == pytest.approx(0.01, abs=2e-3)


def test_one_mask_set_per_layer_and_deterministic_eval():
    """Evaluation gates: every level without learned bits (Algorithm 1 DEPLOYMENT), the
    levels with Pi >= 0.5 while bits are learned (§3.5); training samples Eq. 4."""
    masks = DropBitsMasks(4)
    with torch.no_grad():
        masks.logits.copy_(torch.tensor([1.0, -0.1, 0.0]))
    masks.eval()
    assert masks.gates().tolist() == [1.0, 1.0, 1.0]  # l0_lambda = 0: the full grid
    assert masks.learned_bits() == "4"
    learning = DropBitsMasks(4, l0_lambda=1e-3)
    learning.load_state_dict(masks.state_dict())
    learning.eval()
    assert learning.gates().tolist() == [1.0, 0.0, 1.0]  # keep where Pi >= 0.5
    assert learning.gates().tolist() == [1.0, 0.0, 1.0]
    assert learning.learned_bits() == "4"
    masks.train()
    torch.manual_seed(0)
    samples = torch.stack([masks.gates() for _ in range(200)])
    assert samples.shape == (200, 3) and (samples.std(0) > 0).all()


@pytest.mark.parametrize("design", ["bitwise", "endpoints"])
def test_eval_without_learned_bits_rounds_onto_the_full_grid_algorithm_1(design):
    """Algorithm 1, DEPLOYMENT: "W_hat = min(max(alpha Round(W / alpha), g_0), g_(2^b-1))".
    With l0_lambda = 0 the masks only add noise in training (§3.3): evaluation keeps every
    level even where the keep probability Pi fell below 0.5, and learned_bits says so."""
    torch.manual_seed(0)
    q = SRQQuantizer(3, alpha=0.1, masks=design)
    with torch.no_grad():
        q.masks.logits.fill_(-2.0)  # Pi = 0.12 for every mask
    q.eval()
    x = torch.randn(5000) * 0.3
    assert torch.equal(q(x), round_to_grid(x, q.alpha.detach(), -4, 3))
    assert q.masks.learned_bits() == "3"

    learning = SRQQuantizer(3, alpha=0.1, masks="bitwise", l0_lambda=1e-3)
    with torch.no_grad():
        learning.masks.logits.fill_(-2.0)
    learning.eval()  # bits are learned (bitwise masks): the levels with Pi < 0.5 are gone
    torch.testing.assert_close(
        learning(x), torch.round(x / 0.1).clamp(-1, 1) * 0.1, rtol=0, atol=1e-7
    )
    assert learning.masks.learned_bits() == "T"


def test_regularizer_touches_only_the_highest_alive_level_section_3_5():
    masks = DropBitsMasks(4, l0_lambda=1e-2)
    masks.last_gates = torch.tensor([1.0, 0.3, 0.0])  # level 2 sampled dead, level 1 alive
    loss = masks.regularization_loss()
    (grad,) = torch.autograd.grad(loss, masks.logits)
    assert grad[1] > 0 and grad[0] == 0 and grad[2] == 0
    assert loss.item() == pytest.approx(1e-2 * smoothed_l0(masks.logits[1]).item())

    masks.last_gates = torch.tensor([1.0, 1.0, 1.0])
    (grad,) = torch.autograd.grad(masks.regularization_loss(), masks.logits)
    assert grad[2] > 0 and grad[0] == 0 and grad[1] == 0

    masks.last_gates = torch.zeros(3)  # only the ternary middle is alive: nothing to drop
    assert masks.regularization_loss().item() == 0
    masks.last_gates = torch.ones(3)
    masks.set_progress(0.5)  # the regularized phase (default 50%) is over
    assert masks.regularization_loss().item() == 0
    assert DropBitsMasks(4).regularization_loss().item() == 0  # lambda = 0


def test_levels_below_half_are_dropped_for_good_after_the_regularized_phase():
    masks = DropBitsMasks(4, l0_lambda=1e-3, l0_fraction=0.6)
    with torch.no_grad():
        masks.logits.copy_(torch.tensor([2.0, -1.0, -2.0]))
    masks.set_progress(0.59)
    assert masks.fate.tolist() == [0, 0, 0]
    masks.set_progress(0.6)
    assert masks.fate.tolist() == [KEPT, DROPPED, DROPPED]
    assert masks.learned_bits() == "2"
    with torch.no_grad():
        masks.logits.fill_(5.0)  # dropped stays dropped, in training too
    masks.set_progress(0.9)
    assert masks.learned_bits() == "2"
    assert all(masks.gates()[1:].eq(0)) and masks.train().gates()[1:].eq(0).all()
    with torch.no_grad():
        masks.logits[0] = -3.0  # and kept stays kept: evaluation and learned_bits agree
    assert masks.eval().gates().tolist() == [1.0, 0.0, 0.0]
    assert masks.learned_bits() == "2"

    resumed = DropBitsMasks(4, l0_lambda=1e-3, l0_fraction=0.6)
    resumed.load_state_dict(masks.state_dict())
    resumed.set_progress(0.95)
    assert resumed.fate.tolist() == [KEPT, DROPPED, DROPPED]

    ternary = DropBitsMasks(2, l0_lambda=1e-3)
    with torch.no_grad():
        ternary.logits.fill_(-1.0)
    ternary.set_progress(0.5)
    assert ternary.learned_bits() == "T"


def test_learned_bits_per_layer_of_a_quantized_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(),
        nn.Linear(8, 3),
    )
    lowbit.quantize(
        model, "srq-dropbits", 3, first_last_bits=3, weight_options={"l0_lambda": 1e-3}
    )
    assert model[0].input_quantizer is None and model[3].input_quantizer.masks is None
    assert learned_bits(model) == {"0": "3", "3": "3", "5": "3"}
    with torch.no_grad():
        model[3].weight_quantizer.masks.logits.copy_(torch.tensor([1.0, -1.0]))
        model[5].weight_quantizer.masks.logits.fill_(-1.0)
    for module in model.modules():
        if isinstance(module, DropBitsMasks):
            module.set_progress(0.5)
    assert learned_bits(model) == {"0": "3", "3": "2", "5": "T"}


def test_masks_get_gradients_from_the_task_loss_and_the_regularizer():
    torch.manual_seed(3)
    q = SRQQuantizer(3, alpha=0.05, masks="bitwise", l0_lambda=1e-2)
    w = (torch.randn(5000) * 0.1).requires_grad_()
    with torch.no_grad():
        q.masks.logits.fill_(0.0)  # Pi = 0.5: fractional gates are likely
    for _ in range(20):
        loss = q(w).square().sum() + q.masks.regularization_loss()
        loss.backward()
    assert q.masks.logits.grad is not None and q.masks.logits.grad.abs().sum() > 0


def test_bad_dropbits_input_raises_lowbit_error():
    with pytest.raises(LowbitError, match="lambda"):
        DropBitsMasks(3, l0_lambda=-1e-3)
    with pytest.raises(LowbitError, match="at least 2 bits"):
        DropBitsMasks(1)
    with pytest.raises(LowbitError, match="masks must be"):
        DropBitsMasks(3, design="random")
    with pytest.raises(LowbitError, match="bitwise"):
        DropBitsMasks(3, design="endpoints", l0_lambda=1e-3)
    with pytest.raises(LowbitError, match="l0_fraction"):
        DropBitsMasks(3, l0_fraction=0.0)
    with pytest.raises(LowbitError, match="weights only"):
        SRQQuantizer(3, signed=False, masks="endpoints")
