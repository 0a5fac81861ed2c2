"""Peak memory of a 4-bit SRQ + DropBits forward+backward relative to the uniform quantizer.

Both run on the same 4M-element weight in the same process. Memory is what torch's CPU
allocator reports to the profiler (``profile_memory=True``): every allocation and free with
its size, in order; the peak is the maximum of their running sum, i.e. the most bytes that
were live at once beyond what existed before the pass (the weight, the incoming gradient).
It counts every tensor the pass creates: outputs, tensors saved for backward, temporaries
inside ops and the weight's ``.grad``. Building the ``numel x 2^b`` categorical would take
16 x 4 B per element at 4 bits, a ratio of 16 or more; the target is 2.

    python bench/srq_memory.py [--numel 4000000] [--bits 4]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from lowbit.quant.registry import get_method

TARGET_RATIO = 2.0


def peak_bytes(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor
) -> int:
    """Most bytes live at once during ``fn(x).backward(grad)``, from the allocator's events."""
    x.grad = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(x).backward(grad)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=4_000_000)
    parser.add_argument("--bits", type=int, default=4)
    args = parser.parse_args()

    torch.manual_seed(0)
    weight = (torch.randn(args.numel) * 0.05).requires_grad_()
    grad = torch.randn(args.numel)
    quantizers = {
        "uniform": get_method("uniform").weight_quantizer(args.bits),
        "srq": get_method("srq").weight_quantizer(args.bits),
        "srq_dropbits": get_method("srq-dropbits").weight_quantizer(args.bits),
    }
    peaks = {}
    for name, quantizer in quantizers.items():
        if hasattr(quantizer, "observe"):
            quantizer.observe(weight.detach())
        quantizer(weight).backward(grad)  # warm-up: lazy initialization, first-call caches
        peaks[name] = peak_bytes(quantizer, weight, grad)
        print(
            f"{name:<14} peak {peaks[name] / 2**20:8.1f} MiB "
            f"({peaks[name] / args.numel:5.1f} B/element)"
        )
    values, targets = {}, {}
    for name in ("srq", "srq_dropbits"):
        label = f"{name}_{args.bits}bit_peak_vs_uniform"
        values[label] = round(peaks[name] / peaks["uniform"], 3)
        targets[label] = TARGET_RATIO
        print(f"{label:<36} ratio {values[label]:.2f}")
    print(json.dumps({"bench": "srq_memory", "values": values, "targets": targets}))


if __name__ == "__main__":
    main()
