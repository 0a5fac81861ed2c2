"""Cost of a quantizer's forward+backward relative to one ``clamp`` forward+backward.

Every quantizer a method has is timed, each on its own input and labelled with its role:
``NAME_Bbit_activation`` for the input quantizer (on 2M post-ReLU-like elements) and
``NAME_Bbit_weight`` for the weight quantizer (on a conv-weight-like tensor of about as many
elements, 3x3 kernels, Kaiming-normal values). A weight-only method (``input_quantizer`` is
``None`` on its registry entry, e.g. ``maxscale``) gets only its weight figure.

Each quantizer and its baseline (a ``clamp`` on the very same tensor) run in the same process,
interleaved (clamp, quantizer, clamp, quantizer, ...) so that a change in machine load hits
both; the figure is the median of the per-pair ratios. A quantizer that costs one pass over
memory scores near 1. The naive formulation (``|x - level|`` for every level, then argmin) is
timed too, for reference.

    python bench/quantizer_cost.py [--methods apot,pot,uniform] [--bits 2,3,4,5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import torch

from lowbit.quant.registry import Method, available_methods, get_method

TARGET_RATIO = 3.0
# The quantizers a method can declare: (label suffix, factory attribute on the registry entry,
# whether the issue 2 target applies). A factory that is None is a quantizer the method lacks.
ROLES = (
    ("activation", "input_quantizer", True),
    ("weight", "weight_quantizer", False),
)
WEIGHT_OUT_CHANNELS, WEIGHT_KERNEL = 256, 3


def forward_backward_seconds(fn: Callable, x: torch.Tensor, grad: torch.Tensor) -> float:
    x.grad = None
    start = time.perf_counter()
    fn(x).backward(grad)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_ratio(fn: Callable, baseline: Callable, x: torch.Tensor, repeats: int) -> float:
    """Median over ``repeats`` of time(fn) / time(baseline), measured back to back."""
    grad = torch.randn_like(x)
    for _ in range(3):  # warm-up: allocator, caches, lazily built tables, data-driven init
        forward_backward_seconds(fn, x, grad)
        forward_backward_seconds(baseline, x, grad)
    ratios = []
    for _ in range(repeats):
        base = forward_backward_seconds(baseline, x, grad)
        ratios.append(forward_backward_seconds(fn, x, grad) / base)
    return statistics.median(ratios)


def naive_apot(x: torch.Tensor, quantizer: torch.nn.Module) -> torch.Tensor:
    """RCF with the broadcast projection: what the one-pass projection replaces."""
    alpha = quantizer.alpha
    scaled = (x / alpha).clamp(max=1)
    index = (scaled[..., None] - quantizer.levels).abs().argmin(-1)
    projected = quantizer.levels[index]
    return alpha * (scaled + (projected - scaled).detach())


def activation_input(numel: int, device: str) -> torch.Tensor:
    """Post-ReLU-like activations: half zeros, the rest spread over the clipping range."""
    return torch.randn(numel, device=device).relu_().mul_(4).requires_grad_()


def weight_input(numel: int, device: str) -> torch.Tensor:
    """A conv weight ``(256, C, 3, 3)`` of at most ``numel`` elements (at least one input
    channel), Kaiming-normal like a freshly initialized layer."""
    per_channel = WEIGHT_OUT_CHANNELS * WEIGHT_KERNEL**2
    shape = (WEIGHT_OUT_CHANNELS, max(1, numel // per_channel), WEIGHT_KERNEL, WEIGHT_KERNEL)
    w = torch.empty(shape, device=device)
    torch.nn.init.kaiming_normal_(w, nonlinearity="relu")
    return w.requires_grad_()


def quantizer_roles(method: Method) -> list[tuple[str, Callable, bool]]:
    """``(role, factory, has_target)`` for each quantizer ``method`` declares."""
    roles = []
    for role, attribute, has_target in ROLES:
        factory = getattr(method, attribute)
        if factory is not None:
            roles.append((role, factory, has_target))
    return roles


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(available_methods()))
    parser.add_argument("--bits", default="2,3,4,5")
    parser.add_argument("--numel", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive reference")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    inputs = {
        "activation": activation_input(args.numel, args.device),
        "weight": weight_input(args.numel, args.device),
    }
    baselines = {  # the same tensor as the quantizer's, clipped to a range it spans
        "activation": lambda t: t.clamp(0.0, 8.0),
        "weight": lambda t: t.clamp(-1.0, 1.0),
    }
    bits_list = [int(b) for b in args.bits.split(",")]
    methods = [get_method(name) for name in args.methods.split(",")]
    print(
        f"forward+backward, ratio to clamp on the same tensor (median of {args.repeats}): "
        f"activations {inputs['activation'].numel():,} elements, "
        f"weights {tuple(inputs['weight'].shape)} = {inputs['weight'].numel():,} elements; "
        f"{torch.get_num_threads()} threads"
    )

    values, targets = {}, {}
    x = inputs["activation"]
    if not args.no_naive:
        for bits in bits_list:
            quantizer = get_method("apot").input_quantizer(bits).to(args.device)
            label = f"naive_apot_{bits}bit_activation"
            naive = lambda t, q=quantizer: naive_apot(t, q)  # noqa: E731
            values[label] = round(median_ratio(naive, baselines["activation"], x, 5), 3)
            print(f"{label:<36} {values[label]:6.2f}  (reference, no target)")
    for method in methods:
        for role, factory, has_target in quantizer_roles(method):
            for bits in bits_list:
                if not method.min_bits <= bits <= method.max_bits:
                    continue
                quantizer = factory(bits).to(args.device)
                label = f"{method.name}_{bits}bit_{role}"
                ratio = median_ratio(quantizer, baselines[role], inputs[role], args.repeats)
                values[label] = round(ratio, 3)
                note = ""
                if has_target:
                    targets[label] = TARGET_RATIO
                else:
                    note = "  (no target)"
                print(f"{label:<36} {values[label]:6.2f}{note}")
    result = {"bench": "quantizer_cost", "values": values, "targets": targets}
    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
