"""Cost of sampling the training dynamics (``lowbit.train.dynamics``) on the digits demo: a
sampled training step over a plain one, and what that makes of a stage sampled at the default
interval.

The model, data and optimizer are the embedded demo's (``lowbit train``'s defaults: small CNN,
digits, batch 64), quantized with ``--method`` at ``--bits`` from random weights. Steps
alternate, plain then sampled (the sampler draws no random numbers and changes no state, so
both train the same model), and each step is timed on its own, so that a change in machine
load hits both sides alike; the ratio is the median sampled step over the median plain step.
A stage sampled every ``k`` steps costs ``1 + (ratio - 1) / k`` plain stages: the line
``default`` is that for the demo's quantized stage (15 epochs, ``dynamics_every: null``).

    python bench/dynamics_overhead.py [--method apot] [--bits 4] [--steps 60] [--threads N]

``--threads`` sets PyTorch's CPU threads (default: PyTorch's); on a CPU busy with other work,
one thread spares every small operation a thread handoff, on both sides of the ratio.

The last line is ``{"bench": "dynamics_overhead", "values": {LABEL: ratio}, "targets":
{LABEL: bound}}`` with labels ``sampled step`` and ``default``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from lowbit.allocator import reuse_freed_memory
from lowbit.train.build import data_from_config, model_from_config, quantize_from_config
from lowbit.train.config import resolve_config
from lowbit.train.dynamics import DynamicsSampler, sampling_interval
from lowbit.train.run_config import RunConfig

# The demo is a worst case: a 13 ms step (one thread) against a fixed cost per quantizer per
# sample (statistics over at most 16k elements each); at the default interval, at most 10%.
TARGETS = {"default": 1.10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="apot")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60, help="timed steps of each kind")
    parser.add_argument("--threads", type=int, help="PyTorch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reuse_freed_memory()
    config = RunConfig.parse(resolve_config(None, [
        f"method={args.method}", f"bits={args.bits}", "data.workers=0",
    ]))
    data = data_from_config(config, torch.device("cpu"))
    torch.manual_seed(0)
    model = model_from_config(config, data.num_classes, data.in_channels)
    quantize_from_config(model, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    sampler = DynamicsSampler(model, 1, lambda record: None, {"stage": "quant"})
    batches = [batch for _, batch in zip(range(8), data.train)]

    def step(images: torch.Tensor, labels: torch.Tensor, sampled: bool) -> float:
        start = time.perf_counter()
        with sampler.watch() if sampled else torch.enable_grad():
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if sampled:
            sampler.record(0, 1, loss, 1e-3)
        else:
            float(loss.detach())  # read too: the epoch's mean reads every loss later
        return time.perf_counter() - start

    for images, labels in batches:  # warm-up: data-initialized scales, allocator, kernels
        step(images, labels, True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.steps):
        images, labels = batches[i % len(batches)]
        for sampled in (False, True):
            times[sampled].append(step(images, labels, sampled))
    plain, sampled = statistics.median(times[False]), statistics.median(times[True])
    ratio = sampled / plain
    steps_per_epoch = len(data.train)
    every = sampling_interval(None, config.epochs * steps_per_epoch)
    default = 1 + (ratio - 1) / every
    print(f"plain step {plain * 1e3:.2f} ms, sampled step {sampled * 1e3:.2f} ms "
          f"(medians of {args.steps}): ratio {ratio:.3f}")
    print(f"demo stage ({config.epochs} epochs x {steps_per_epoch} steps, sampled every "
          f"{every}): {default:.3f} of an unsampled stage")
    values = {"sampled step": round(ratio, 3), "default": round(default, 3)}
    print(json.dumps({"bench": "dynamics_overhead", "values": values, "targets": TARGETS}))


if __name__ == "__main__":
    main()
