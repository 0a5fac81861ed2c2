"""Quantized evaluation time relative to float evaluation time.

ResNet-20 on 10,000 CIFAR-shaped images (random, batch 500), evaluated with the trainer's
``evaluate`` (``eval()`` and ``torch.no_grad()``): float, and APoT 4-bit as ``lowbit.quantize``
builds it (8-bit first and last layers). Both models are built in the same process and
their passes timed interleaved (float, quantized, float, ...), so a change in machine load
hits both; the figure is the median of the per-pair ratios. A quantized layer quantizes its
weight once per evaluation (``lowbit.nn.layers``), so what remains is the activations'
quantization. Like the ``lowbit`` command, the process keeps freed memory for reuse
(``lowbit.allocator``), which spares both sides the page faults of their large batches.

    python bench/eval_speed.py [--method apot --bits 4] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import lowbit
from lowbit.allocator import reuse_freed_memory
from lowbit.models import build_model
from lowbit.train.loop import evaluate

IMAGES, BATCH, CLASSES, SHAPE = 10_000, 500, 10, (3, 32, 32)
TARGET = 1.3


def seconds(model: torch.nn.Module, batches: list) -> float:
    start = time.perf_counter()
    evaluate(model, batches, show_progress=False)
    if batches[0][0].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="apot")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    reuse_freed_memory()  # as the lowbit command does, for both sides

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(IMAGES, *SHAPE, generator=generator).to(args.device)
    labels = torch.randint(0, CLASSES, (IMAGES,), generator=generator).to(args.device)
    batches = list(zip(images.split(BATCH), labels.split(BATCH)))
    torch.manual_seed(0)
    float_model = build_model("resnet20", num_classes=CLASSES).to(args.device)
    torch.manual_seed(0)
    quantized = build_model("resnet20", num_classes=CLASSES)
    lowbit.quantize(quantized, args.method, args.bits).to(args.device)
    for model in (float_model, quantized):  # warm-up; data-initialized step sizes
        seconds(model, batches[:2])
    ratios, float_times = [], []
    for _ in range(args.repeats):
        base = seconds(float_model, batches)
        float_times.append(base)
        ratios.append(seconds(quantized, batches) / base)
    label = f"{args.method}_{args.bits}bit_eval_vs_float"
    value = round(statistics.median(ratios), 3)
    print(f"ResNet-20, {IMAGES:,} images, batch {BATCH}, {args.device}, "
          f"{torch.get_num_threads()} threads: float eval {statistics.median(float_times):.2f} s "
          f"(median of {args.repeats})")
    print(f"{label:<28} {value:6.2f}  ({min(ratios):.2f}-{max(ratios):.2f})  target <= {TARGET}")
    print(json.dumps({"bench": "eval_speed", "values": {label: value}, "targets": {label: TARGET}}))


if __name__ == "__main__":
    main()
