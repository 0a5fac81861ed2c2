"""rq, srq and srq-dropbits (SRQ paper, seed 004: Eq. 1-4, Algorithms 1-3) against float64
references.

alpha = 2^-3 makes every half-way point ``(k + 1/2) alpha`` exact in float32; sigma is
``0.35 alpha`` (SRQ) or ``0.4 alpha`` (RQ: ``3 sigma / alpha + 1/2 = 1.7``, far from an
integer, so float32 and float64 agree on the window size ``K = 5``).

Randomness is fixed, not averaged over:

* RQ training: the reference gets the Gumbel noise lowbit drew: ``-log(-log u)`` with ``u``
  the counter-based uniforms (``lowbit.quant.noise``) of the one seed ``relaxed_quantize``
  draws from torch, the same on the eager and the native path. Both paths are checked against
  the same Eq. 2 reference, so each path's arithmetic is checked, not its noise.
* DropBits training: the gate sample of the forward (``masks.last_gates``, reproduced by
  seeding torch before the forward); the reference recovers Eq. 4's logistic noise from it,
  so the gates' gradient into the keep-probability logits is Eq. 4's at that sample.
"""

from __future__ import annotations

import pytest
import torch
from refeq_battery import (
    F64,
    Outcome,
    assert_agrees,
    check_against_reference,
    clean,
    compare,
    generator_for,
    gradient,
    make_tensor,
    place,
    quantizer_for,
    run_library,
    run_reference,
    set_parameters,
)
from refeq_relaxed import (
    grid_integers,
    hard_concrete_given_sample,
    round_to_grid,
    rq,
    rq_margin,
    srq,
    srq_margin,
    window,
)

import lowbit
from lowbit.quant.noise import counter_uniforms, element_counters

SHAPE_IN, SHAPE_W = (4, 60), (6, 5, 2, 4)
ALPHA = 0.125
SRQ_SIGMA, RQ_SIGMA = 0.35 * ALPHA, 0.4 * ALPHA
LOGITS = [2.5, 0.3, -0.4, 1.0, -2.0, 0.8, 1.5]  # DropBits keep-probability logits, per level


def bit_range(name: str) -> list[int]:
    if name not in lowbit.available_methods():
        return []
    method = lowbit.get_method(name)
    return list(range(method.min_bits, method.max_bits + 1))


def grid_tensor(shape, bits, signed, gen, margin):
    """Test tensor over the grid's range with 8 exact half-way points, cleaned."""
    lo, hi = grid_integers(bits, signed)
    scale = ALPHA * max(abs(lo), hi)
    x, fixed = make_tensor(shape, scale, gen)
    ties = [(int(torch.randint(lo, hi, (), generator=gen)) + 0.5) * ALPHA for _ in range(8)]
    place(x, fixed, torch.randperm(x.numel(), generator=gen)[:8].tolist(), ties)
    return clean(x, fixed, margin, scale, gen)


def setup(quantizer, x, sigma, logits=None):
    """Initialize from data (``observe``, as calibration), then set known values."""
    quantizer.observe(x)
    values = {"alpha": torch.tensor(ALPHA), "sigma": torch.tensor(sigma)}
    if logits is not None:
        values["masks.logits"] = logits
    set_parameters(quantizer, values)


def srq_cases():
    cases = []
    for name in ("srq", "srq-dropbits"):
        for bits in bit_range(name):
            if name == "srq":  # weights: the signed grid, no masks
                cases.append((name, bits, "weight"))
            cases += [(name, bits, "unsigned input"), (name, bits, "signed input")]
    return cases


@pytest.mark.parametrize("method,bits,role", srq_cases())
def test_srq_without_masks(method, bits, role):
    """SRQ, Eq. 3 / Algorithm 1 without DropBits (srq weights, srq and srq-dropbits inputs,
    which the spec gives no masks): forward the mode of ``pi / sum pi`` over the grid (the
    nearest grid point, half-way values to the larger), backward the multi-class STE through
    ``r_imax = pi_imax / sum pi``, gradients into x, alpha and sigma."""
    q, signed = quantizer_for(method, bits, role)
    gen = generator_for(method, bits, role)
    shape = SHAPE_W if role == "weight" else SHAPE_IN
    x = grid_tensor(shape, bits, signed, gen,
                    lambda v: srq_margin(v, ALPHA, SRQ_SIGMA, bits, signed))
    g = gradient(x.shape, gen)
    setup(q, x, SRQ_SIGMA)
    q.train()

    def fn(v, p):
        return srq(v, p["alpha"], p["sigma"], bits, signed)

    params = {"alpha": torch.tensor(ALPHA), "sigma": torch.tensor(SRQ_SIGMA)}
    lib = run_library(q, x, g)
    ref = run_reference(fn, x, g, params)
    ref32 = run_reference(fn, x, g, params, torch.float32)
    problems = compare(lib, ref, ref32, x, g, min(ALPHA, SRQ_SIGMA))
    q.eval()  # Algorithm 1 deployment: the same nearest grid point
    with torch.no_grad():
        deployed = q(x).double()
    expected = round_to_grid(x.double(), torch.tensor(ALPHA, dtype=F64), bits, signed)
    if not torch.equal(deployed, expected):
        problems.append("eval forward differs from Algorithm 1's clamp(alpha round(x / alpha))")
    assert_agrees(problems, f"{method} {bits}-bit {role}")


DROPBITS_BITS = bit_range("srq-dropbits")


def dropbits_quantizer(bits, **options):
    q = lowbit.get_method("srq-dropbits").weight_quantizer(bits, **options)
    assert q.masks is not None
    return q, torch.tensor(LOGITS[: bits - 1])


@pytest.mark.parametrize("bits", DROPBITS_BITS)
def test_srq_dropbits_training_with_a_fixed_gate_sample(bits):
    """SRQ + DropBits weights in training, Algorithm 1 lines 9-17: bitwise masks ``Z``
    (Figure 3(b); ``k = -1, 0, 1`` unmasked) sampled by Eq. 4, ``r = Z pi / sum Z pi``,
    forward the mode of ``r``, backward the multi-class STE through ``r_imax`` (the spec's
    item 5), into x, alpha, sigma and, through Eq. 4 at the sampled noise, the logits."""
    q, logits = dropbits_quantizer(bits)
    gen = generator_for("srq-dropbits", bits, "train")
    probe, _ = make_tensor(SHAPE_W, ALPHA * 2 ** (bits - 1), gen)
    setup(q, probe, SRQ_SIGMA, logits)
    q.train()
    torch.manual_seed(bits)
    with torch.no_grad():
        q(probe)
    gates = q.masks.last_gates.clone()
    x = grid_tensor(SHAPE_W, bits, True, gen,
                    lambda v: srq_margin(v, ALPHA, SRQ_SIGMA, bits, True, gates))
    g = gradient(x.shape, gen)

    def fn(v, p):
        z = hard_concrete_given_sample(p["masks.logits"], gates)
        return srq(v, p["alpha"], p["sigma"], bits, True, z)

    params = {"alpha": torch.tensor(ALPHA), "sigma": torch.tensor(SRQ_SIGMA),
              "masks.logits": logits}
    torch.manual_seed(bits)
    lib = run_library(q, x, g)
    assert torch.equal(q.masks.last_gates, gates), "the gate sample was not reproduced"
    ref = run_reference(fn, x, g, params)
    ref32 = run_reference(fn, x, g, params, torch.float32)
    problems = compare(lib, ref, ref32, x, g, min(ALPHA, SRQ_SIGMA))
    assert_agrees(problems, f"srq-dropbits {bits}-bit weight, training, gates {gates.tolist()}")


@pytest.mark.parametrize("learned_bits", [False, True], ids=["fixed-bits", "learned-bits"])
@pytest.mark.parametrize("bits", DROPBITS_BITS)
def test_srq_dropbits_evaluation(bits, learned_bits):
    """SRQ + DropBits weights in evaluation (deterministic). Without learned bit-widths:
    Algorithm 1's deployment, ``clamp(alpha round(W / alpha))`` on the full grid (issue 12,
    item 7), whatever the keep probabilities. With learned bit-widths (``l0_lambda > 0``,
    §3.5 / §F: a level with ``Pi < 0.5`` is dropped): the mode of ``Z pi`` with
    ``Z = 1[Pi >= 0.5]``, i.e. the nearest kept grid point."""
    options = {"l0_lambda": 1e-3} if learned_bits else {}
    q, logits = dropbits_quantizer(bits, **options)
    gen = generator_for("srq-dropbits", bits, "eval", learned_bits)
    gates = (logits >= 0).double() if learned_bits else None
    x = grid_tensor(SHAPE_W, bits, True, gen,
                    lambda v: srq_margin(v, ALPHA, SRQ_SIGMA, bits, True, gates))
    setup(q, x, SRQ_SIGMA, logits)
    q.eval()
    with torch.no_grad():
        got = q(x).double()
    alpha = torch.tensor(ALPHA, dtype=F64)
    if learned_bits:
        want = srq(x.double(), alpha, torch.tensor(SRQ_SIGMA, dtype=F64), bits, True, gates)
    else:
        want = round_to_grid(x.double(), alpha, bits, True)
    problems = compare(run_outcome(got), run_outcome(want.detach()), None, x, x, ALPHA,
                       check_gradients=False)
    assert_agrees(problems, f"srq-dropbits {bits}-bit weight, eval, learned={learned_bits}")


def run_outcome(out):
    """A forward-only outcome, for evaluation mode (no gradients compared)."""
    return Outcome(out, None, {})


def rq_cases():
    return [
        (bits, role)
        for bits in bit_range("rq")
        for role in ("weight", "unsigned input", "signed input")
    ]


def noise(seed, x, size):
    """The Gumbel noise lowbit's RQ forward draws after ``torch.manual_seed(seed)``, on either
    path: the counter-based uniforms ``u`` of the seed it takes from torch (``quant.noise``;
    tests/quant/test_noise.py checks the kernel draws the same bits), as ``-log(-log u)``."""
    torch.manual_seed(seed)
    drawn = int(torch.randint(0, 2**63 - 1, ()))
    u = counter_uniforms(drawn, element_counters(x), size).double()
    return -(-u.log()).log()


@pytest.mark.parametrize("bits,role", rq_cases())
def test_rq_training_given_its_noise(bits, role):
    """RQ training, Eq. 1-2 / Algorithm 2: ``x_hat = alpha sum_i r_i k_i``,
    ``r = softmax((log pi_i + u_i) / tau)`` over Louizos' local window, ``tau = 1``, with the
    Gumbel noise ``u`` lowbit drew; gradients by autograd into x, alpha and sigma."""
    q, signed = quantizer_for("rq", bits, role)
    gen = generator_for("rq", bits, role, "train")
    x = grid_tensor(SHAPE_W if role == "weight" else SHAPE_IN, bits, signed, gen,
                    lambda v: rq_margin(v, ALPHA))
    g = gradient(x.shape, gen)
    setup(q, x, RQ_SIGMA)
    q.train()
    assert q.temperature() == 1.0
    k = window(x, ALPHA, RQ_SIGMA, bits, signed)
    seed = 1000 + bits
    u = noise(seed, x, k.shape[-1])

    def fn(v, p):
        return rq(v, p["alpha"], p["sigma"], 1.0, k, u)

    params = {"alpha": torch.tensor(ALPHA), "sigma": torch.tensor(RQ_SIGMA)}
    torch.manual_seed(seed)
    check_against_reference(
        q, fn, x, g, params, min(ALPHA, RQ_SIGMA), f"rq {bits}-bit {role}, training",
        smooth_forward=True,
    )


@pytest.mark.parametrize("bits,role", rq_cases())
def test_rq_evaluation(bits, role):
    """RQ inference, Algorithm 3: ``min(max(alpha round(x / alpha), g_0), g_last)``, half-way
    values to the larger point."""
    q, signed = quantizer_for("rq", bits, role)
    gen = generator_for("rq", bits, role, "eval")
    x = grid_tensor(SHAPE_IN, bits, signed, gen, lambda v: rq_margin(v, ALPHA))
    setup(q, x, RQ_SIGMA)
    q.eval()
    with torch.no_grad():
        got = q(x).double()
    want = round_to_grid(x.double(), torch.tensor(ALPHA, dtype=F64), bits, signed)
    problems = compare(run_outcome(got), run_outcome(want), None, x, x, ALPHA,
                       check_gradients=False)
    assert_agrees(problems, f"rq {bits}-bit {role}, eval")
