"""Training dynamics: every quantizer's state, sampled every few steps of a stage.

At a sampled step the sampler reads, for every quantizer that offers the hooks of
``lowbit.quant.hooks``:

* what it learns (``StateReporter``): alpha, step, sigma, RQ's temperature, DropBits' keep
  probabilities and the bit-width evaluation would use (``learned_bits``);
* what it quantizes (``GridReporter``): for weights the layer's weight before the step, for
  layer inputs the batch of that step (a forward hook, registered for that step only):
  ``input_mean`` and ``input_std`` of the raw tensor (UniQ Fig. 4's "std of the quantizer
  input"), ``sqnr_db`` of its nearest-level projection in the quantizer's own domain (UniQ
  Table 1 / Fig. 4's ``10 log10(Var[x] / MSE)``), ``clipping_ratio`` (the fraction beyond the
  end levels, APoT Fig. 4b), ``near_level`` (the fraction of the nonzero values inside the
  range within ``NEAR_LEVEL`` of the narrower gap beside their nearest level: 0.2 for values
  spread evenly over a uniform grid, towards 1 as weights cluster on the levels, SRQ Fig. 2)
  and, for weights, a ``histogram`` of the values in grid units (APoT Fig. 5b; over
  ``histogram_range``, the levels' span widened by a quarter on each side, values beyond it
  counted in the end bins). Each is computed over at most ``STATISTICS_ELEMENTS`` evenly
  strided elements of the tensor: a fixed cost per quantizer, whatever the batch.

Between samples nothing is read: the loop asks ``due(step)`` (integer arithmetic) and the
sampled step reads its values back from the device together (DropBits' bit-width first reads
its few masks). The sampler draws no random numbers and changes no state, so a run trains
bitwise alike with or without it. Under ``torch.compile`` only weights and learned state are
sampled: a hook added for one step would make the compiled graph recompile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lowbit.quant.hooks import GridReporter, GridView
from lowbit.train.hooks import QuantizerHooks

# ``dynamics_every: null`` samples a stage about this many times: enough points for the
# figures' curves; a sample costs ~1 ms per quantizer, which at 50 made the default demo's
# 4-bit stage ~20% slower (3.1 -> 3.8 s), at 20 under 10%.
DYNAMICS_SAMPLES = 20
# A value is "near" its level within this fraction of the gap between the two levels around it.
NEAR_LEVEL = 0.1
HISTOGRAM_BINS = 40
# The statistics of a tensor are those of this many of its elements at most, evenly strided:
# estimates within a fraction of a percent, at a cost that does not grow with the batch.
STATISTICS_ELEMENTS = 1 << 14
# What the weight and input quantizers of a quantized layer are called (lowbit.nn.layers).
QUANTIZER_ROLES = ("weight_quantizer", "input_quantizer")
# Significant digits kept in metrics.jsonl.
DIGITS = 6

Record = dict[str, Any]


def sampling_interval(every: int | None, total_steps: int) -> int:
    """Steps between two samples: ``every``, or for ``None`` about ``DYNAMICS_SAMPLES``
    samples over ``total_steps``; 0 means never."""
    if every is not None:
        return every
    return max(1, math.ceil(total_steps / DYNAMICS_SAMPLES))


def _strided(t: torch.Tensor, stride: int) -> torch.Tensor:
    return t.reshape(-1)[::stride].contiguous()


@torch.no_grad()
def grid_statistics(x: torch.Tensor, view: GridView, histogram: bool = False) -> dict[str, Any]:
    """The statistics of the module docstring for ``x`` on ``view`` (device tensors), over
    at most about ``STATISTICS_ELEMENTS`` evenly strided elements of each tensor."""
    stride = max(1, x.numel() // STATISTICS_ELEMENTS)
    units = _strided(view.units.detach().float(), stride)
    std, mean = torch.std_mean(_strided(x.detach().float(), stride), correction=0)
    stats: dict[str, Any] = {"input_mean": mean, "input_std": std}
    levels = view.levels.detach().to(units)
    if levels.numel() < 2:
        return stats
    inside = units.clamp(levels[0], levels[-1])
    index = torch.bucketize(inside, (levels[1:] + levels[:-1]) / 2)  # a tie: the lower
    nearest = levels.index_select(0, index)
    error = units - nearest
    signal = units
    scale = view.scale.detach().float()
    if scale.numel() > 1:  # per channel: the SQNR in the quantizer's domain (one scale cancels)
        scale = _strided(torch.broadcast_to(scale, view.units.shape), stride)
        signal, error = units * scale, error * scale
    noise = error.square().mean().clamp(min=1e-30)
    stats["sqnr_db"] = 10 * torch.log10(signal.var(correction=0) / noise)
    in_range = inside == units
    stats["clipping_ratio"] = 1 - in_range.float().mean()
    # Near: within NEAR_LEVEL of the narrower gap beside the nearest level.
    gaps = levels.diff()
    narrower = torch.minimum(torch.cat([gaps[:1], gaps]), torch.cat([gaps, gaps[-1:]]))
    tolerance = NEAR_LEVEL * narrower
    counted = in_range & (units != 0)
    near = counted & ((inside - nearest).abs_() < tolerance.index_select(0, index))
    stats["near_level"] = near.sum() / counted.sum().clamp(min=1)
    if histogram:  # on the device: the bounds are tensors, so nothing is read back here
        span = levels[-1] - levels[0]
        low, width = levels[0] - span / 4, 1.5 * span / HISTOGRAM_BINS
        # Equal bins: arithmetic, not a search; values beyond the range go to the end bins.
        bins = units.sub(low).div_(width).floor_().clamp_(0, HISTOGRAM_BINS - 1).long()
        counts = torch.bincount(bins, minlength=HISTOGRAM_BINS)
        stats["histogram"] = counts / (units.numel() * width)
        stats["histogram_range"] = torch.stack([low, low + HISTOGRAM_BINS * width])
    return stats


def _weight_of(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    layout = getattr(layer, "quantizer_layout", None)  # transposed convs (lowbit.nn.layers)
    return weight if layout is None else layout(weight)


class DynamicsSampler:
    """Samples one model's quantizers every ``every`` steps and hands each record to
    ``write`` with ``fields`` (e.g. the stage) added; ``watch_inputs=False`` samples weights
    and learned state only."""

    def __init__(
        self,
        model: nn.Module,
        every: int,
        write: Callable[[Record], None],
        fields: Record | None = None,
        watch_inputs: bool = True,
    ) -> None:
        self.every, self.write, self.fields = every, write, dict(fields or {})
        self.hooks = QuantizerHooks(model)
        self.weights: list[tuple[str, nn.Module, nn.Module]] = []
        self.inputs: list[tuple[str, nn.Module]] = []
        for name, module in model.named_modules():
            for role in QUANTIZER_ROLES:
                quantizer = getattr(module, role, None)
                if not isinstance(quantizer, GridReporter):
                    continue
                key = f"{name}.{role}" if name else role
                if role == "weight_quantizer":
                    self.weights.append((key, quantizer, module))
                elif watch_inputs:
                    self.inputs.append((key, quantizer))
        self.pending: dict[str, dict[str, Any]] = {}

    @classmethod
    def for_model(
        cls, model: nn.Module, every: int, write: Callable[[Record], None], **options: Any
    ) -> DynamicsSampler | None:
        """A sampler, or ``None`` when ``every`` is 0 or no quantizer reports anything (a
        float model)."""
        sampler = cls(model, every, write, **options)
        if every == 0 or not (sampler.weights or sampler.inputs or sampler.hooks.reporters):
            return None
        return sampler

    def due(self, step: int) -> bool:
        """Whether step ``step`` (0-based, counted over the stage) is sampled."""
        return step % self.every == 0

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Around the forward of a sampled step: the inputs' statistics as the forward
        hands them over, then (the forward having set any step initialized from data) the
        learned state and the weights' statistics, before the optimizer changes them."""
        pending: dict[str, dict[str, Any]] = {}
        handles = [
            quantizer.register_forward_hook(self._input_hook(name, pending))
            for name, quantizer in self.inputs
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        for name, state in self.hooks.training_state().items():
            pending.setdefault(name, {}).update(state)
        for name, quantizer, layer in self.weights:
            weight = _weight_of(layer).detach()
            view = quantizer.grid_view(weight.float())
            if view is not None:
                pending.setdefault(name, {}).update(grid_statistics(weight, view, True))
        self.pending = pending

    def _input_hook(self, name: str, pending: dict[str, dict[str, Any]]):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if "input_std" in pending.get(name, {}):
                return  # a joint step runs the model once per bit-width: the first counts
            x = args[0].detach().float()
            view = module.grid_view(x)
            if view is not None:
                pending.setdefault(name, {}).update(grid_statistics(x, view))

        return hook

    def record(self, step: int, epoch: int, loss: torch.Tensor, lr: float) -> Record:
        """Write the sampled step's record (one read-back from the device) and return it."""
        tensors: list[torch.Tensor] = [loss.detach().float().reshape(-1)]
        places: list[tuple[str, str, int, bool]] = []
        quantizers: dict[str, dict[str, Any]] = {name: {} for name in self.pending}
        for name, stats in self.pending.items():
            for key, value in stats.items():
                value = torch.as_tensor(value).detach().float()
                places.append((name, key, value.numel(), value.dim() == 0))
                tensors.append(value.reshape(-1).to(tensors[0].device))
        values = torch.cat(tensors).tolist()
        loss_value, position = values[0], 1
        for name, key, size, scalar in places:
            chunk = [_round(v) for v in values[position : position + size]]
            position += size
            quantizers[name][key] = chunk[0] if scalar else chunk
        self.pending = {}
        record = {
            "kind": "step", **self.fields, "epoch": epoch, "step": step,
            "loss": _round(loss_value), "lr": lr, "quantizers": quantizers,
        }
        self.write(record)
        return record


def _round(value: float) -> float:
    return value if not math.isfinite(value) else float(f"{value:.{DIGITS}g}")
