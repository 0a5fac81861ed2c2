"""Cost of a quantizer's forward+backward relative to one ``clamp`` forward+backward.

Both sides run on the same 2M-element tensor in the same process; the ratio is the median
over repeats. A quantizer that costs one pass over memory scores near 1; the broadcast
``|x - level|`` projection scores 7x at 2 bits and 52x at 5 bits on a 2-core CPU.

    python bench/quantizer_cost.py [--methods apot,pot,uniform] [--bits 2,3,4,5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lowbit.quant.registry import available_methods, get_method

TARGET_RATIO = 3.0


def time_forward_backward(fn, x: torch.Tensor, repeats: int, warmup: int = 3) -> float:
    """Median seconds of ``fn(x).backward(grad)`` over ``repeats`` runs."""
    grad = torch.randn_like(x)
    times = []
    for i in range(warmup + repeats):
        x.grad = None
        start = time.perf_counter()
        fn(x).backward(grad)
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(available_methods()))
    parser.add_argument("--bits", default="2,3,4,5")
    parser.add_argument("--numel", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    # Post-ReLU-like activations: half zeros, the rest spread over the clipping range.
    x = torch.randn(args.numel, device=args.device).relu_().mul_(4).requires_grad_()
    baseline = time_forward_backward(lambda t: t.clamp(0.0, 8.0), x, args.repeats)
    print(f"clamp forward+backward on {args.numel:,} elements: {baseline * 1e3:.2f} ms")

    values, targets = {}, {}
    for name in args.methods.split(","):
        method = get_method(name)
        for bits in (int(b) for b in args.bits.split(",")):
            if not method.min_bits <= bits <= method.max_bits:
                continue
            quantizer = method.input_quantizer(bits).to(args.device)
            seconds = time_forward_backward(quantizer, x, args.repeats)
            label = f"{name}_{bits}bit_activation"
            values[label] = round(seconds / baseline, 3)
            targets[label] = TARGET_RATIO
            print(f"{label:<28} {seconds * 1e3:8.2f} ms  ratio {values[label]:.2f}")
    print(json.dumps({"bench": "quantizer_cost", "values": values, "targets": targets}))


if __name__ == "__main__":
    main()
