"""Cost of a quantizer's forward+backward relative to one ``clamp`` forward+backward.

Both run on the same 2M-element tensor in the same process, interleaved (clamp, quantizer,
clamp, quantizer, ...) so that a change in machine load hits both; the figure is the median of
the per-pair ratios. A quantizer that costs one pass over memory scores near 1. The naive
formulation (``|x - level|`` for every level, then argmin) is timed too, for reference.

    python bench/quantizer_cost.py [--methods apot,pot,uniform] [--bits 2,3,4,5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

from lowbit.quant.registry import available_methods, get_method

TARGET_RATIO = 3.0


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
    for _ in range(3):  # warm-up: allocator, caches, lazily built tables
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(available_methods()))
    parser.add_argument("--bits", default="2,3,4,5")
    parser.add_argument("--numel", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive reference")
    args = parser.parse_args()

    torch.manual_seed(0)
    # Post-ReLU-like activations: half zeros, the rest spread over the clipping range.
    x = torch.randn(args.numel, device=args.device).relu_().mul_(4).requires_grad_()
    clamp = lambda t: t.clamp(0.0, 8.0)  # noqa: E731
    bits_list = [int(b) for b in args.bits.split(",")]
    print(f"forward+backward on {args.numel:,} elements, ratio to clamp (median of {args.repeats})")

    values, targets = {}, {}
    if not args.no_naive:
        for bits in bits_list:
            quantizer = get_method("apot").input_quantizer(bits).to(args.device)
            label = f"naive_apot_{bits}bit_activation"
            naive = lambda t, q=quantizer: naive_apot(t, q)  # noqa: E731
            values[label] = round(median_ratio(naive, clamp, x, 5), 3)
            print(f"{label:<32} {values[label]:6.2f}  (reference, no target)")
    for name in args.methods.split(","):
        method = get_method(name)
        for bits in bits_list:
            if not method.min_bits <= bits <= method.max_bits:
                continue
            quantizer = method.input_quantizer(bits).to(args.device)
            label = f"{name}_{bits}bit_activation"
            values[label] = round(median_ratio(quantizer, clamp, x, args.repeats), 3)
            targets[label] = TARGET_RATIO
            print(f"{label:<32} {values[label]:6.2f}")
    print(json.dumps({"bench": "quantizer_cost", "values": values, "targets": targets}))


if __name__ == "__main__":
    main()
