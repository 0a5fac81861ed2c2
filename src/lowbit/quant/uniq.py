"""Uniform quantizers with a learned step size: UniQ (Eq. 3-6) and LSQ (Esser et al. 2020).

Three grids, all ``step * q`` for codes ``q`` between ``q_min`` and ``q_max``:

* ``"symmetric"`` (UniQ weights, Eq. 3-4): ``N = 2**bits`` half-integer codes
  ``+-1/2, +-3/2, ..., +-(N-1)/2``; no zero level, ``alpha = step (N-1)/2``; 1 bit is
  binarization ``+-step/2``.
* ``"signed"`` (LSQ weights): two's-complement codes ``-2**(b-1) .. 2**(b-1)-1`` (one more
  negative level; UniQ calls this semi-symmetric).
* ``"unsigned"`` (activations, UniQ Eq. 5 and LSQ alike): codes ``0 .. 2**bits - 1``.

The step gets LSQ's gradient scale ``g = 1/sqrt(n Q_P)`` (``n`` the elements per step size:
per output channel when kernel-wise) and no other special treatment.
"""

from __future__ import annotations

import math
import warnings
from typing import Union

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter, is_lazy

from lowbit.errors import LowbitError
from lowbit.quant import native
from lowbit.quant.hooks import GridView
from lowbit.quant.init import lsq_step, mse_activation_step, mse_weight_step
from lowbit.quant.precision import float32_compute
from lowbit.quant.ste import clip_backward

MAX_BITS = 8
GRIDS = ("symmetric", "signed", "unsigned")
# An unsigned quantizer zeroes negative inputs; past this fraction that is likely a mistake.
NEGATIVE_FRACTION = 0.01
# Keeps a step computed from an all-zero tensor (a dead channel) positive.
MIN_STEP = 1e-8

Init = Union[str, float]


def learned_step_formula(
    x: torch.Tensor,
    step: torch.Tensor,
    q_min: float,
    q_max: float,
    symmetric: bool,
    grad_scale: float,
) -> torch.Tensor:
    """``lowbit::learned_step_quantize`` on every device (see ``learned_step_quantize``);
    ``grad_scale`` is for the backward."""
    code = x / step
    if symmetric:
        # Sign-magnitude rounding, so Q(-x) = -Q(x) holds exactly, even at ties and -0.
        code.abs_().floor_().clamp_(max=q_max - 0.5).add_(0.5).copysign_(x)
    else:
        code.round_().clamp_(q_min, q_max)
    return code.mul_(step)


learned_step_op = torch.library.custom_op(
    "lowbit::learned_step_quantize", learned_step_formula, mutates_args=()
)


@learned_step_op.register_fake
def _(x, step, q_min, q_max, symmetric, grad_scale):
    return torch.empty_like(x)


@learned_step_op.register_kernel("cpu")
def _(x, step, q_min, q_max, symmetric, grad_scale):
    if step.numel() != 1 or not native.serves(x):
        return learned_step_formula(x, step, q_min, q_max, symmetric, grad_scale)
    mode = native.SYMMETRIC if symmetric else native.ROUND_CLAMP
    top = q_max - 0.5 if symmetric else q_max
    return native.uniform(x, mode, float(step), 0.0, q_min, top)


def _setup_context(ctx, inputs, output):
    x, step, ctx.q_min, ctx.q_max, _, ctx.grad_scale = inputs
    ctx.save_for_backward(x, output, step)


def _backward(ctx, grad_out):
    """Straight-through: ``x`` passes inside the open clipping range and gets 0 outside and on
    its bounds. For the step, ``dQ/dstep = q - x/step`` inside (UniQ Eq. 6, first case) and
    ``q`` outside (the clipped code), i.e. ``(Q - x [inside]) / step`` everywhere: two dot
    products for a layer-wise step, a sum per channel for a kernel-wise one. Times the
    gradient scale ``g``.
    """
    x, out, step = ctx.saved_tensors
    # The bounds themselves count as clipped (UniQ Eq. 6: inside is |x| < alpha; LSQ Eq. 3:
    # v/s >= Q_P gives Q_P).
    grad_x, grad_step = clip_backward(
        grad_out, x, out, ctx.q_min * step, ctx.q_max * step, closed=False,
        scale=step if ctx.needs_input_grad[1] else None,
    )
    if grad_step is not None:
        grad_step = grad_step * ctx.grad_scale
    return grad_x, grad_step, None, None, None, None


learned_step_op.register_autograd(_backward, setup_context=_setup_context)


@float32_compute
def learned_step_quantize(
    x: torch.Tensor,
    step: torch.Tensor,
    q_min: float,
    q_max: float,
    symmetric: bool = False,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """``step * clip(round(x / step), q_min, q_max)`` with the STE gradients of UniQ Eq. 6.

    ``step`` is a scalar or broadcasts against ``x`` (``(C, 1, 1, 1)`` for kernel-wise conv
    weights). ``symmetric=True`` rounds to the half-integer codes of UniQ Eq. 3-4 (``q_min =
    -q_max = -(N-1)/2``); otherwise codes are integers, rounded half to even. ``grad_scale``
    multiplies the step's gradient (LSQ's ``g``). Outside the clipping range the step's
    gradient is the clipped code, ``sign(x) (N-1)/2`` for UniQ weights: Eq. 6 prints
    ``sign(x) alpha``, but ``alpha = step (N-1)/2`` itself moves with the step, and autograd of
    Eq. 3 (as in the authors' code) gives ``sign(x) alpha / step``.

    One operator, ``lowbit::learned_step_quantize`` (``_backward``): autograd of the formula
    would record five elementwise ops and save their inputs, this saves only ``x`` and the
    output; a layer-wise step on float32 CPU tensors takes one fused pass
    (``lowbit.quant.native``), everything else ``learned_step_formula``.
    """
    return learned_step_op(x, step.to(x.dtype), q_min, q_max, symmetric, grad_scale)


def code_range(grid: str, bits: int) -> tuple[float, float]:
    """``(q_min, q_max)`` of a grid at ``bits`` bits."""
    if grid == "symmetric":
        half = (2**bits - 1) / 2
        return -half, half
    if grid == "signed":
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def positive_levels(grid: str, bits: int) -> int:
    """LSQ's ``Q_P`` (the gradient scale and LSQ init use it): ``2**b - 1`` unsigned,
    ``2**(b-1) - 1`` signed; UniQ's authors use ``max(2**(b-1) - 1, 1)`` for weights."""
    if grid == "unsigned":
        return 2**bits - 1
    return max(2 ** (bits - 1) - 1, 1)


class LearnedStepQuantizer(nn.Module):
    """A uniform quantizer on ``grid`` whose step size is learned (UniQ §4.1, LSQ).

    ``init`` sets the first step size: ``"mse"`` (UniQ §4.2, Eq. 9 for weights, Eq. 10 for
    activations; not defined for the ``"signed"`` grid), ``"lsq"`` (``2 E|X| / sqrt(Q_P)``) or a
    number (UniQ Table 5 uses 0.1 and 0.2). ``per_channel`` gives one step per output channel
    (dim 0 of the weight: "kernel-wise"); activations (``"unsigned"``) are layer-wise.

    A per-channel step has shape ``(C,)`` from the moment the quantized layer is built
    (``allocate``, called by ``lowbit.nn.layers``); a quantizer used on its own has an
    uninitialized parameter (``torch.nn.UninitializedParameter``, which DDP refuses) until it
    is allocated, loads a state dict or sees its first tensor. Its values are set from data,
    in place, under ``no_grad``, by ``initialize``: on the first ``observe``
    (calibration, ``lowbit.nn.calibrate``) or else on the first forward. Weight quantizers use
    the first tensor they see; activation quantizers (``activation=True``; signed ones use the
    weights' grid and init rule on their input) keep the maximum of the per-batch estimates
    over every batch observed before training starts (UniQ §4.2).

    A step loaded from a state dict is kept when it was learned at the same bit-width (the
    ``step_bits`` buffer records it); at another bit-width it is dropped and the step is
    initialized again from data, as UniQ §4.2 / Table 1 initialize each bit-width's step
    (progressive 2 -> 1 bit runs would otherwise start from the 2-bit step).
    """

    def __init__(
        self,
        bits: int,
        grid: str,
        init: Init = "mse",
        per_channel: bool = False,
        activation: bool | None = None,
    ) -> None:
        super().__init__()
        if grid not in GRIDS:
            raise LowbitError(f"grid must be one of {GRIDS}, got {grid!r}")
        min_bits = 2 if grid == "signed" else 1  # one two's-complement bit is the sign alone
        if isinstance(bits, bool) or not isinstance(bits, int) or not min_bits <= bits <= MAX_BITS:
            raise LowbitError(
                f"a {grid} quantizer needs bits in {min_bits}..{MAX_BITS}, got {bits!r}"
            )
        _check_init(init, grid)
        self.bits, self.grid, self.init, self.per_channel = bits, grid, init, per_channel
        self.activation = grid == "unsigned" if activation is None else activation
        if per_channel and self.activation:
            raise LowbitError("activation quantizers are layer-wise; drop per_channel=True")
        self.q_min, self.q_max = code_range(grid, bits)
        self.q_p = positive_levels(grid, bits)
        # Per-channel: sized by allocate() when the layer is built (or by the first tensor).
        self.step = UninitializedParameter() if per_channel else nn.Parameter(torch.ones(()))
        self.register_buffer("step_bits", torch.tensor(bits))
        self.initialized = False
        self._calibrating = False
        self._warned_negative = False

    @property
    def signed(self) -> bool:
        """Whether the grid has negative levels."""
        return self.grid != "unsigned"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self.initialize(x)
        if self.training:
            self._calibrating = False
        step = self.step
        if step.dim() == 1:
            step = step.view(-1, *([1] * (x.dim() - 1)))
        grad_scale = 1.0 / math.sqrt(x.numel() / self.step.numel() * self.q_p)
        return learned_step_quantize(
            x, step, self.q_min, self.q_max, self.grid == "symmetric", grad_scale
        )

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Calibration hook: initialize from ``x``; activations keep the running maximum."""
        if not self.initialized:
            self.initialize(x)
            self._calibrating = self.activation
        elif self._calibrating:
            self._fill_step(torch.maximum(self.step, self.initial_step(x).to(self.step)))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the step from ``x`` with the ``init`` rule (outside autograd), in place."""
        self._fill_step(self.initial_step(x))
        self.initialized = True

    def allocate(self, weight_shape: torch.Size) -> None:
        """Give a per-channel step its final shape ``(weight_shape[0],)`` (values 1 until
        initialized); the quantized layer calls it when it is built. Layer-wise: nothing."""
        if self.per_channel:
            self._size_step((int(weight_shape[0]),), f"a weight of shape {tuple(weight_shape)}")

    def initial_step(self, x: torch.Tensor) -> torch.Tensor:
        """The ``init`` rule's step for the tensor ``x`` (shape ``(C,)`` when per-channel)."""
        if self.grid == "unsigned":
            self._warn_if_negative(x)
        n_levels = 2**self.bits
        if self.init == "lsq":
            step = lsq_step(x, self.q_p, self.per_channel)
        elif self.init == "mse" and self.grid == "unsigned":
            step = mse_activation_step(x, n_levels)
        elif self.init == "mse":
            step = mse_weight_step(x, n_levels, self.per_channel)
        else:
            shape = (x.shape[0],) if self.per_channel else ()
            step = torch.full(shape, float(self.init), device=x.device)
        return step.clamp(min=MIN_STEP)

    @torch.no_grad()
    def _size_step(self, shape: tuple[int, ...], what: str) -> None:
        """Materialize an unallocated step at ``shape``; a clear error for an allocated step
        of another shape (the only time a step gets a shape is here, before training)."""
        if is_lazy(self.step):
            self.step.materialize(shape)
            self.step.fill_(1.0)
        elif tuple(self.step.shape) != tuple(shape):
            kind = "per-channel" if self.per_channel else "layer-wise"
            raise LowbitError(
                f"a {kind} step of shape {tuple(self.step.shape)} cannot take {what} (shape "
                f"{tuple(shape)}): was it made for another layer, or with another per_channel?"
            )

    def _fill_step(self, value: torch.Tensor) -> None:
        """Copy ``value`` into the step, in place: its shape never changes once allocated."""
        self._size_step(tuple(value.shape), "this tensor's steps")
        self.step.copy_(value)

    def _warn_if_negative(self, x: torch.Tensor) -> None:
        if self._warned_negative or x.numel() == 0:
            return
        fraction = float((x < 0).float().mean())
        if fraction > NEGATIVE_FRACTION:
            self._warned_negative = True
            warnings.warn(
                f"an unsigned {self.bits}-bit activation quantizer sees {fraction:.0%} negative "
                "inputs: the layer's input can be negative and unsigned quantization will zero "
                "it; keep that layer float (quantize(..., overrides={name: None})) or give it "
                "non-negative inputs (e.g. a ReLU before it)",
                stacklevel=2,
            )

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if is_lazy(self.step):  # never allocated: saved as is, as lazy modules save theirs
            destination[prefix + "step"] = self.step
            bits = self.step_bits
            destination[prefix + "step_bits"] = bits if keep_vars else bits.detach()
            return
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # load_state_dict hands each module a shallow copy of the caller's dict.
        saved_bits = state_dict.setdefault(prefix + "step_bits", self.step_bits.clone())
        saved = state_dict.get(prefix + "step")
        if saved is not None and is_lazy(saved):
            # The state of a quantizer that never saw a weight: nothing learned to load.
            state_dict[prefix + "step"] = self.step if is_lazy(self.step) else self.step.detach()
        elif saved is not None:
            # A step of the wrong shape is an error here, before anything is copied.
            self._size_step(tuple(saved.shape), f"the step {prefix}step of the state dict")
            if int(saved_bits) != self.bits:  # another bit-width's step: re-initialize
                state_dict[prefix + "step"] = torch.ones_like(self.step)
                state_dict[prefix + "step_bits"] = self.step_bits.clone()
                self.initialized, self._calibrating = False, False
            else:
                self.initialized, self._calibrating = True, False
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def training_state(self) -> dict[str, torch.Tensor]:
        """The step size, the mean over channels when kernel-wise
        (``lowbit.quant.hooks.StateReporter``); none before it is initialized."""
        return {"step": self.step.detach().mean()} if self.initialized else {}

    @torch.no_grad()
    def grid_view(self, x: torch.Tensor) -> GridView | None:
        """``x / step`` on the codes ``q_min .. q_max`` (``lowbit.quant.hooks.GridReporter``);
        ``None`` before the step is initialized."""
        if not self.initialized:
            return None
        step = self.step.detach()
        if step.dim() == 1:
            step = step.view(-1, *([1] * (x.dim() - 1)))
        codes = torch.arange(self.q_min, self.q_max + 1, device=x.device, dtype=x.dtype)
        return GridView(x / step, codes, step)

    def extra_repr(self) -> str:
        channel = ", per_channel" if self.per_channel else ""
        return f"{self.grid}, bits={self.bits}, init={self.init!r}{channel}"


def _check_init(init: Init, grid: str) -> None:
    if isinstance(init, str):
        if init not in ("mse", "lsq"):
            raise LowbitError(f"init must be 'mse', 'lsq' or a positive number, got {init!r}")
        if init == "mse" and grid == "signed":
            raise LowbitError(
                "the MSE init is derived for UniQ's grids; use init='lsq' or a number"
            )
    elif isinstance(init, bool) or not isinstance(init, (int, float)) or not init > 0:
        raise LowbitError(f"init must be 'mse', 'lsq' or a positive number, got {init!r}")


def uniq_weight_quantizer(
    bits: int, init: Init = "mse", per_channel: bool = True
) -> LearnedStepQuantizer:
    """UniQ weights: symmetric grid (Eq. 3), kernel-wise by default (§5.1)."""
    return LearnedStepQuantizer(bits, "symmetric", init, per_channel)


def uniq_input_quantizer(
    bits: int, init: Init = "mse", signed: bool = False
) -> LearnedStepQuantizer:
    """UniQ activations: unsigned grid with a zero level (Eq. 5), layer-wise. ``signed=True``:
    the symmetric grid of Eq. 3 with Eq. 9's init on the input, as the UniQ authors quantize
    the first convolution's (signed) input with their weight quantizer, layer-wise."""
    return LearnedStepQuantizer(bits, "symmetric" if signed else "unsigned", init, activation=True)


def lsq_weight_quantizer(bits: int, per_channel: bool = False) -> LearnedStepQuantizer:
    """LSQ weights: two's-complement grid, ``2 E|W| / sqrt(Q_P)`` init, layer-wise."""
    return LearnedStepQuantizer(bits, "signed", "lsq", per_channel)


def lsq_input_quantizer(bits: int, signed: bool = False) -> LearnedStepQuantizer:
    """LSQ activations: unsigned grid, ``2 E|X| / sqrt(Q_P)`` init; ``signed=True``: the
    two's-complement grid of signed data (LSQ §2.1, ``Q_N = 2**(b-1)``, ``Q_P = 2**(b-1) - 1``)."""
    return LearnedStepQuantizer(bits, "signed" if signed else "unsigned", "lsq", activation=True)
