"""What every reference test shares: test tensors, running a lowbit quantizer and a reference
with the same inputs, and comparing them with tolerances that float32 rounding justifies.

Tolerances. lowbit computes in float32 (eps = 2^-23), the references in float64. A value may
differ from the float64 reference by

* forward: ``16 eps (|x| + |Q(x)| + unit)``, ``unit`` the quantizer's length scale (alpha,
  the step): a few roundings of numbers of that size. Nothing more, so a value rounded to
  the wrong level (a tie broken the wrong way is at least a step off) always fails;
* input gradient: ``64 eps |g| (1 + (|x| + |Q(x)|) / unit)``: every derivative of
  ``s f(x / s)`` is built from such ratios, ``g`` the upstream gradient;
* parameter gradient, a sum over elements: ``64 eps`` times the sum of those per-element sizes
  (a clipping quantizer's ``(sum g Q - sum g_x x) / s`` cancels terms of that size), plus
  ``256 eps sum_i |g_i dQ_i/dtheta|`` (the terms themselves, from forward-mode AD of the
  reference; ``n eps sum|terms|`` bounds recursive summation of ``n`` ~ 240 terms);
* and, for gradients and RQ's smooth forward, 4 times what the *same reference formula*
  loses when evaluated in float32 (``ref32 - ref64``): the conditioning of smooth formulas
  (softmax, sigmoid differences, Eq. 9's statistics), without trusting any implementation.

A real error (a wrong convention on one element, a missing term) is of the size of one
element's contribution, ``sum|terms| / n`` or more: two orders above these bounds.

Rounding decisions get no freedom, so test values must not sit where float32 and float64
could decide differently: random elements within ``MARGIN`` of a decision boundary (by the
reference's own ``*_margin``) are moved, and the deliberate exact ties are built from values
float32 represents exactly, so both precisions see the same tie.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import torch

import lowbit

F64 = torch.float64
EPS32 = torch.finfo(torch.float32).eps
MARGIN = 1e-4  # relative distance to a decision boundary below which a random value is moved
FORWARD_ULPS, GRADIENT_ULPS, CONDITIONING = 16.0, 64.0, 4.0
SUM_ULPS = 256.0  # n eps sum|terms|: recursive summation's bound for the n = 240 elements


@dataclass
class Outcome:
    out: torch.Tensor
    grad_x: torch.Tensor | None
    grads: dict[str, torch.Tensor | None] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def generator_for(*key) -> torch.Generator:
    """A generator seeded from the test case (stable across processes, unlike ``hash``)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def gradient(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """The upstream gradient ``dL/dQ(x)``: standard normal, float32."""
    return torch.randn(shape, generator=generator)


def place(x: torch.Tensor, fixed: torch.Tensor, positions, values) -> None:
    """Write exact ``values`` at flat ``positions`` and mark them as deliberate."""
    flat, mask = x.view(-1), fixed.view(-1)
    for position, value in zip(positions, values):
        exact = torch.tensor(float(value), dtype=torch.float32)
        assert float(exact) == float(value), f"{value!r} is not exact in float32"
        flat[position] = exact
        mask[position] = True


def make_tensor(
    shape: tuple[int, ...],
    scale: torch.Tensor | float,
    generator: torch.Generator,
    beyond: float = 2.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 tensor of ``shape``: Gaussian values of std ``0.6 * scale`` (negative ones
    included), 1/8 of the elements beyond the range (``+-[1.1, beyond] * scale``) and four
    exact zeros. ``scale`` is the quantizer's range (alpha, ``Q_P s``, ...), a number or a
    tensor broadcasting against ``shape`` (per channel). Returns ``(x, fixed)``, ``fixed``
    marking the deliberate values (here the zeros)."""
    n = 1
    for size in shape:
        n *= size
    units = torch.randn(n, generator=generator, dtype=F64) * 0.6
    outside = torch.randperm(n, generator=generator)[: max(n // 8, 2)]
    signs = torch.where(torch.rand(outside.numel(), generator=generator) < 0.5, -1.0, 1.0)
    magnitude = 1.1 + (beyond - 1.1) * torch.rand(outside.numel(), generator=generator)
    units[outside] = (signs * magnitude).double()
    scale = torch.as_tensor(scale, dtype=F64)
    x = (units.view(shape) * scale).float()
    fixed = torch.zeros(shape, dtype=torch.bool)
    zeros = torch.randperm(n, generator=generator)[:4]
    place(x, fixed, zeros.tolist(), [0.0] * 4)
    return x, fixed


def clean(
    x: torch.Tensor,
    fixed: torch.Tensor,
    margin: Callable[[torch.Tensor], torch.Tensor],
    scale: torch.Tensor | float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Move the random elements that lie within ``MARGIN`` of a decision boundary of the
    reference (``margin(x)``: per element, relative) by a random 0.1-1 % of the tensor's
    range ``scale`` (as in ``make_tensor``). A small move keeps the statistics that couple
    the elements (Eq. 9, max|tanh w|) nearly where they were, so the other elements stay
    clear of their boundaries."""
    scale = torch.as_tensor(scale, dtype=F64).expand(x.shape).reshape(-1)
    for _ in range(100):
        near = (margin(x.double()).reshape(-1) < MARGIN) & ~fixed.reshape(-1)
        if not near.any():
            return x
        count = int(near.sum())
        step = torch.empty(count, dtype=F64).uniform_(0.001, 0.01, generator=generator)
        step = torch.where(torch.rand(count, generator=generator) < 0.5, -step, step)
        x.view(-1)[near] = (x.view(-1)[near].double() + step * scale[near]).float()
    raise AssertionError("could not move the test values away from the decision boundaries")


def run_library(quantizer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> Outcome:
    """Forward ``x`` (float32) through a lowbit quantizer, backward ``g``; gradients of ``x``
    and of every parameter that requires one, in float64."""
    leaf = x.clone().requires_grad_()
    for parameter in quantizer.parameters():
        parameter.grad = None
    out = quantizer(leaf)
    assert out.dtype == torch.float32 and out.shape == x.shape
    out.backward(g)
    grads = {
        name: None if p.grad is None else p.grad.detach().double().clone()
        for name, p in quantizer.named_parameters()
        if p.requires_grad
    }
    grad_x = None if leaf.grad is None else leaf.grad.double()
    return Outcome(out.detach().double(), grad_x, grads)


def run_reference(
    fn: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor],
    x: torch.Tensor,
    g: torch.Tensor,
    params: dict[str, torch.Tensor],
    dtype: torch.dtype = F64,
    grad_names: tuple[str, ...] | None = None,
    per_channel: bool = False,
) -> Outcome:
    """The reference ``fn(x, params)`` in ``dtype`` with autograd; ``grad_names`` (default
    all) are the parameters whose gradients are returned. In float64 it also returns, per
    parameter entry, ``sum_i |g_i dQ(x_i)/dtheta|`` (forward-mode AD of the same surrogate):
    the size of the terms a parameter's gradient sums (``Outcome.terms``)."""
    names = tuple(params) if grad_names is None else grad_names
    leaf = x.detach().to(dtype, copy=True).requires_grad_()
    leaves = {
        n: v.detach().to(dtype).clone().requires_grad_(n in names) for n, v in params.items()
    }
    out = fn(leaf, leaves)
    inputs = [leaf, *(leaves[n] for n in names)]
    grads = torch.autograd.grad(out, inputs, g.to(dtype), allow_unused=True)
    grads = [torch.zeros_like(t) if d is None else d for t, d in zip(inputs, grads)]
    outcome = Outcome(
        out.detach().double(),
        grads[0].double(),
        {n: d.double() for n, d in zip(names, grads[1:])},
    )
    if dtype == F64:
        outcome.terms = {n: _term_sizes(fn, x, g, params, n, per_channel) for n in names}
    return outcome


def _term_sizes(fn, x, g, params, name, per_channel):
    """``sum_i |g_i dQ_i/dtheta_j|`` for every entry ``j`` of parameter ``name``: one
    forward-mode pass per entry (one in all for a per-channel parameter, whose entries each
    reach only their own channel)."""
    x64, g64 = x.double(), g.double().abs()
    fixed = {n: v.detach().double() for n, v in params.items() if n != name}
    value = params[name].detach().double()

    def with_value(theta):
        return fn(x64, {**fixed, name: theta})

    if per_channel and value.dim() == 1 and value.numel() == x.shape[0]:
        _, tangent = torch.func.jvp(with_value, (value,), (torch.ones_like(value),))
        return (g64 * tangent.abs()).reshape(x.shape[0], -1).sum(1)
    sizes = torch.zeros_like(value).reshape(-1)
    for j in range(value.numel()):
        direction = torch.zeros_like(value).reshape(-1)
        direction[j] = 1
        _, tangent = torch.func.jvp(with_value, (value,), (direction.view_as(value),))
        sizes[j] = (g64 * tangent.abs()).sum()
    return sizes.view_as(value)


def _report(what: str, got: torch.Tensor, want: torch.Tensor, tol: torch.Tensor,
            x: torch.Tensor | None) -> str | None:
    error = (got - want).abs()
    bad = ~(error <= tol)  # NaN counts as bad
    if not bad.any():
        return None
    flat_error = torch.where(bad, error, torch.zeros_like(error)).reshape(-1)
    flat_error = torch.nan_to_num(flat_error, nan=float("inf"))
    worst = int(flat_error.argmax())
    where = f"index {worst}"
    if x is not None and x.numel() == got.numel():
        where += f" (x = {float(x.reshape(-1)[worst]):.9g})"
    return (
        f"{what}: {int(bad.sum())} of {bad.numel()} differ, max abs error "
        f"{float(error.reshape(-1)[worst]):.3g} at {where}: lowbit "
        f"{float(got.reshape(-1)[worst]):.9g}, reference {float(want.reshape(-1)[worst]):.9g} "
        f"(tolerance {float(tol.reshape(-1)[worst]):.2g})"
    )


def compare(
    lib: Outcome,
    ref: Outcome,
    ref32: Outcome | None,
    x: torch.Tensor,
    g: torch.Tensor,
    unit: torch.Tensor | float,
    *,
    kinks: torch.Tensor | None = None,
    multiplier: float | dict[str, float] = 1.0,
    per_channel: bool = False,
    smooth_forward: bool = False,
    coupled: bool = False,
    check_gradients: bool = True,
) -> list[str]:
    """Every difference beyond tolerance between lowbit's ``lib`` and the float64 ``ref``
    (see the module docstring), as readable lines; ``[]`` when all agree.

    ``unit``: the quantizer's length scale (broadcasts against ``x``). ``kinks``: elements on
    a clipping bound, whose input gradient is a convention checked by
    ``test_reference_boundaries`` instead. ``multiplier``: a factor every gradient carries
    (a gradient scale, ``1/tau``), per parameter name if a dict (key ``"x"`` for the input).
    ``coupled``: every element's gradient includes a sum over the layer (Eq. 9, max|tanh|).
    """
    x64, g64 = x.double(), g.double().abs()
    unit = torch.as_tensor(unit, dtype=F64).expand(x.shape)
    magnitude = x64.abs() + ref.out.abs()
    problems = []

    def factor(name):
        return multiplier.get(name, 1.0) if isinstance(multiplier, dict) else multiplier

    def conditioning(got_ref32, want):
        if ref32 is None or got_ref32 is None:
            return torch.zeros_like(want)
        return CONDITIONING * torch.nan_to_num((got_ref32 - want).abs(), nan=0.0)

    tol = FORWARD_ULPS * EPS32 * (magnitude + unit)
    if smooth_forward:
        tol = tol + conditioning(ref32.out if ref32 else None, ref.out)
    line = _report("forward", lib.out, ref.out, tol, x64)
    if line:
        problems.append(line)
    if not check_gradients:
        return problems

    per_element = g64 * (1 + magnitude / unit)
    if lib.grad_x is None:
        problems.append("grad x: lowbit gives x no gradient")
    else:
        tol = GRADIENT_ULPS * EPS32 * factor("x") * per_element
        if coupled:
            tol = tol + GRADIENT_ULPS * EPS32 * factor("x") * per_element.sum() / 4
        tol = tol + conditioning(ref32.grad_x if ref32 else None, ref.grad_x)
        got, want = lib.grad_x, ref.grad_x
        if kinks is not None:
            got, want = got[~kinks], want[~kinks]
            tol, shown = tol[~kinks], x64[~kinks]
        else:
            shown = x64
        line = _report("grad x", got, want, tol, shown)
        if line:
            problems.append(line)

    if set(lib.grads) != set(ref.grads):
        problems.append(
            f"parameters with gradients: lowbit {sorted(lib.grads)}, "
            f"reference {sorted(ref.grads)}"
        )
    for name in sorted(set(lib.grads) & set(ref.grads)):
        got, want = lib.grads[name], ref.grads[name]
        if got is None:
            problems.append(f"grad {name}: lowbit gives no gradient")
            continue
        if got.shape != want.shape:
            problems.append(f"grad {name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
            continue
        if per_channel and want.dim() == 1 and want.numel() == x.shape[0]:
            total = per_element.reshape(x.shape[0], -1).sum(1)
        else:
            total = per_element.sum().expand(want.shape)
        tol = GRADIENT_ULPS * EPS32 * factor(name) * total
        if name in ref.terms:
            tol = tol + SUM_ULPS * EPS32 * ref.terms[name]
        tol = tol + conditioning(ref32.grads.get(name) if ref32 else None, want)
        line = _report(f"grad {name}", got, want, tol, None)
        if line:
            problems.append(line)
    return problems


def set_parameters(quantizer: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Overwrite named parameters (shapes may change: a per-channel step) under no_grad."""
    named = dict(quantizer.named_parameters())
    with torch.no_grad():
        for name, value in values.items():
            parameter = named[name]
            value = torch.as_tensor(value, dtype=parameter.dtype)
            if parameter.shape != value.shape:
                parameter.set_(value.clone())
            else:
                parameter.copy_(value)


def assert_agrees(problems: list[str], case: str) -> None:
    assert not problems, f"{case}:\n  " + "\n  ".join(problems)


def check_against_reference(
    quantizer: torch.nn.Module,
    fn: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor],
    x: torch.Tensor,
    g: torch.Tensor,
    params: dict[str, torch.Tensor],
    unit: torch.Tensor | float,
    case: str,
    *,
    grad_names: tuple[str, ...] | None = None,
    **compare_options,
) -> None:
    """lowbit's ``quantizer`` against the reference ``fn`` on ``x`` with upstream gradient
    ``g``: run both (the reference in float64, and in float32 for its conditioning),
    ``compare`` with ``compare_options`` and assert that they agree."""
    per_channel = compare_options.get("per_channel", False)
    lib = run_library(quantizer, x, g)
    ref = run_reference(fn, x, g, params, grad_names=grad_names, per_channel=per_channel)
    ref32 = run_reference(fn, x, g, params, torch.float32, grad_names=grad_names)
    assert_agrees(compare(lib, ref, ref32, x, g, unit, **compare_options), case)


def quantizer_for(
    method: str, bits: int, role: str, **weight_options
) -> tuple[torch.nn.Module, bool]:
    """lowbit's ``method`` quantizer for ``role`` ("weight", "unsigned input" or "signed
    input"; weights with ``weight_options``) and whether the values it sees are signed."""
    factory = lowbit.get_method(method)
    if role == "weight":
        return factory.weight_quantizer(bits, **weight_options), True
    signed = role == "signed input"
    return factory.input_quantizer(bits, signed=signed), signed
