"""DoReFa weights (UniQ Eq. 2), AdaBits' modified rounding, CoQuant's centered variant, and PACT
activations with one clipping level per bit-width."""

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.quant.bit_widths import check_bit_widths
from lowbit.quant.dorefa import DoReFaWeightQuantizer, dorefa_weight_quantize
from lowbit.quant.pact import PACTQuantizer, pact_quantize
from lowbit.quant.registry import get_method


def normalized(w):
    t = torch.tanh(w)
    return (t / t.abs().max() + 1) / 2


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_original_scheme_is_eq2(bits):
    """UniQ Eq. 2: 2 Quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1, with Quantize_k(x) =
    round(x (2^k - 1)) / (2^k - 1)."""
    w = torch.randn(1000)
    n = 2**bits - 1
    expected = 2 * torch.round(normalized(w) * n) / n - 1
    assert torch.allclose(dorefa_weight_quantize(w, bits, "original"), expected, atol=1e-6)


def test_eq2_two_bits_has_four_levels_with_both_ends():
    levels = torch.unique(dorefa_weight_quantize(torch.linspace(-3, 3, 1001), 2, "original"))
    assert torch.allclose(levels, torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))


def test_modified_levels_nest_but_are_not_symmetric():
    """AdaBits' modified rounding: q = min(floor(2^b u), 2^b - 1) / 2^b; the (b-1)-bit level set
    is inside the b-bit one; levels run from -1 to 1 - 2^(1-b)."""
    w = torch.linspace(-3, 3, 20001)
    sets = {b: set(dorefa_weight_quantize(w, b, "modified").tolist()) for b in (2, 3, 4)}
    assert sets[2] <= sets[3] <= sets[4]
    assert sorted(sets[2]) == [-1.0, -0.5, 0.0, 0.5]


@pytest.mark.parametrize("bits", [2, 3, 6])
def test_centered_levels_are_symmetric_and_bins_nest(bits):
    """CoQuant's default: bin centres (2k + 1) / 2^b - 1, Q(-w) = -Q(w); the (b-1)-bit code of a
    weight is its b-bit code without the last bit."""
    torch.manual_seed(0)
    w = torch.randn(5000)
    q = dorefa_weight_quantize(w, bits, "centered")
    assert torch.equal(dorefa_weight_quantize(-w, bits, "centered"), -q)
    code = torch.round((q + 1) * 2**bits / 2 - 0.5)
    lower = torch.round((dorefa_weight_quantize(w, bits - 1, "centered") + 1) * 2 ** (bits - 1) / 2
                        - 0.5)
    assert torch.equal(torch.div(code, 2, rounding_mode="floor"), lower)
    assert len(torch.unique(q)) == 2**bits


def test_rescale_keeps_the_float_weights_std():
    w = torch.randn(64, 32, 3, 3) * 0.05
    q = dorefa_weight_quantize(w, 4, "centered", rescale=True)
    assert q.std().item() == pytest.approx(w.std().item(), rel=1e-5)


def test_weight_gradient_is_straight_through_the_rounding():
    """The gradient equals autograd of the unrounded formula 2 u - 1 (rounding = identity)."""
    w = torch.randn(300, requires_grad=True)
    g = torch.randn(300)
    dorefa_weight_quantize(w, 3, "centered").backward(g)
    quantized_grad = w.grad.clone()
    w.grad = None
    (2 * normalized(w) - 1).backward(g)
    assert torch.allclose(quantized_grad, w.grad, atol=1e-6)


def adabits_pact(x, alpha, bits):
    """AdaBits' activation formula under autograd, rounding straight through."""
    n = 2**bits - 1
    clipped = torch.where(x.relu() < alpha, x.relu(), alpha)
    u = clipped / alpha
    return (u + (torch.round(u * n) / n - u).detach()) * alpha


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_adabits_alpha_gradient_equals_autograd_of_its_formula(bits):
    """PACT with AdaBits' rounding as autograd differentiates it (coquant): x straight through
    inside [0, alpha], zero outside; alpha gets (Q(x) - x) / alpha inside and 1 above."""
    torch.manual_seed(0)
    x = (torch.randn(4000) * 4).requires_grad_()
    alpha = torch.tensor(5.0, requires_grad=True)
    g = torch.randn(4000)
    out = pact_quantize(x, alpha, bits, alpha_gradient="adabits")
    out.backward(g)
    grads = x.grad.clone(), alpha.grad.clone()
    x.grad = alpha.grad = None
    reference = adabits_pact(x, alpha, bits)
    reference.backward(g)
    assert torch.allclose(out, reference, atol=1e-5)
    assert torch.allclose(grads[0], x.grad, atol=1e-6)
    assert grads[1].item() == pytest.approx(alpha.grad.item(), rel=1e-4)


@pytest.mark.parametrize("signed", [False, True])
def test_pact_alpha_gradient_is_pact_eq3(signed):
    """PACT (Choi et al. 2018) Eq. 3: dy_q/dalpha = 1 for x >= alpha and 0 below (STE on the
    rounding); two-sided, -1 for x <= -alpha. Today's LSQ-style gradient gave (Q - x)/alpha
    inside as well."""
    x = torch.tensor([-7.0, -2.0, -0.3, 0.0, 0.4, 1.3, 2.2, 3.0, 4.0, 9.0], requires_grad=True)
    alpha = torch.tensor(3.0, requires_grad=True)
    g = torch.arange(1.0, 11.0)
    out = pact_quantize(x, alpha, 2, signed=signed)
    out.backward(g)
    if signed:  # step alpha / 1: ternary {-3, 0, 3}
        assert out.tolist() == [-3.0, -3.0, 0.0, 0.0, 0.0, 0.0, 3.0, 3.0, 3.0, 3.0]
        assert alpha.grad.item() == -1.0 + 8 + 9 + 10
        assert x.grad.tolist() == [0.0, 2, 3, 4, 5, 6, 7, 0, 0, 0]
    else:  # step alpha / 3: {0, 1, 2, 3}
        assert out.tolist() == [0.0, 0, 0, 0, 0, 1, 2, 3, 3, 3]
        assert alpha.grad.item() == 8 + 9 + 10
        assert x.grad.tolist() == [0.0, 0, 0, 4, 5, 6, 7, 0, 0, 0]  # [0, alpha): Eq. 1


def test_signed_pact_grid_is_symmetric_with_a_zero_level():
    """Two-sided PACT: clip to [-alpha, alpha], step alpha / (2^(b-1) - 1): 2^b - 1 levels."""
    x = torch.linspace(-10, 10, 20001)
    for bits in (2, 3, 4, 8):
        levels = torch.unique(pact_quantize(x, torch.tensor(4.0), bits, signed=True))
        n = 2 ** (bits - 1) - 1
        torch.testing.assert_close(levels, torch.arange(-n, n + 1) * (4.0 / n))


def test_pact_keeps_one_alpha_per_bit_width_and_borrows_the_nearest():
    q = PACTQuantizer(8, alpha=8.0, bit_widths=[2, 8, 4])
    assert q.bit_widths == (8, 4, 2) and q.alpha.shape == (3,)
    with torch.no_grad():
        q.alpha.copy_(torch.tensor([8.0, 4.0, 2.0]))
    x = torch.full((10,), 100.0)
    for bits, clip in ((8, 8.0), (4, 4.0), (2, 2.0), (5, 4.0), (6, 8.0), (3, 4.0)):
        q.set_bits(bits)  # 6 is as far from 8 as from 4: the higher wins
        assert q(x).max().item() == clip, bits
    q.set_bits(4)
    q(torch.rand(50) * 10).sum().backward()
    assert q.alpha.grad[1] != 0 and q.alpha.grad[0] == 0 and q.alpha.grad[2] == 0


def test_switching_needs_a_bit_width_set_and_bits_in_2_to_8():
    with pytest.raises(LowbitError, match="one bit-width"):
        DoReFaWeightQuantizer(4).set_bits(2)
    q = DoReFaWeightQuantizer(8, bit_widths=[8, 4])
    q.set_bits(3)  # zero-shot: any of 2..8
    for bad in (1, 9, 2.5, True):
        with pytest.raises(LowbitError, match="2..8"):
            q.set_bits(bad)
    with pytest.raises(LowbitError, match="empty"):
        check_bit_widths([])
    with pytest.raises(LowbitError, match="repeats"):
        check_bit_widths([8, 8])


def test_registered_methods():
    """dorefa: Eq. 2 weights, inputs clipped to [0, 1] (alpha fixed); pact and coquant learn
    alpha; coquant rounds with AdaBits' modified scheme and keeps AdaBits' alpha gradient."""
    dorefa, pact, coquant = (get_method(name) for name in ("dorefa", "pact", "coquant"))
    assert dorefa.weight_quantizer(4).scheme == "original"
    fixed = dorefa.input_quantizer(4)
    assert fixed.alpha.item() == 1.0 and not fixed.alpha.requires_grad
    assert pact.input_quantizer(4).alpha.requires_grad
    assert coquant.weight_quantizer(4).scheme == "modified"
    assert coquant.input_quantizer(4).alpha_gradient == "adabits"
    assert pact.input_quantizer(4).alpha_gradient == "pact"
    assert pact.input_quantizer(4, signed=True).signed


def test_weight_rescale_leaves_batchnorm_training_unchanged(conv_batchnorm_step):
    """DoReFa's output 2q - 1 lies in [-1, 1] (UniQ Eq. 2); the default std(w)/std(q) rescale
    (detached, a positive number per layer) keeps a pretrained layer's scale. A BatchNorm in
    training mode after the conv removes any positive factor, so loss and weight gradients are
    those of the literal Eq. 2 output (rescale=False)."""
    rescaled, literal = (
        conv_batchnorm_step(DoReFaWeightQuantizer(4, rescale=rescale)) for rescale in (True, False)
    )
    for ours, paper in zip(rescaled, literal):
        torch.testing.assert_close(ours, paper, rtol=1e-4, atol=1e-5)
