"""Cost of one training step of each configuration relative to one float training step.

ResNet-20 at CIFAR shape (3x32x32, 10 classes), batch 128, SGD with momentum; a step is
forward, loss, backward and optimizer step. The float model and every configuration are built
in the same process and timed interleaved (float, config A, config B, float, ...) so that a
change in machine load hits all of them; each figure is the median of the per-round ratios
``time(config step) / time(float step)``.

A configuration is ``METHOD:BITS``: one bit-width (``apot:4``) or, for a method that can
switch, a bit-width set trained jointly (``coquant:8,6,4,2``: CoQuant Algorithm 1 with dynamic
teacher selection and block swapping, one step = every bit-width's forward and backward).

    python bench/train_step.py [--config coquant:8,6,4,2 --config apot:4] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import lowbit
from lowbit.adaptive import AdaptiveSettings, JointObjective, make_adaptive
from lowbit.models import build_model

BATCH, CLASSES, SHAPE = 128, 10, (3, 32, 32)
DEFAULT_CONFIGS = ("coquant:8,6,4,2",)
# Issue 6: one CoQuant step over B = {8, 6, 4, 2} costs at most 4.4 float steps.
TARGETS = {"coquant:8,6,4,2": 4.4}

Step = Callable[[torch.Tensor, torch.Tensor], None]


def make_step(config: str | None, device: str) -> Step:
    """A closure doing one training step of ``config`` (``None``: the float model)."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=CLASSES).to(device)
    objective = None
    if config is not None:
        method, _, bits_text = config.partition(":")
        bits = [int(b) for b in bits_text.split(",")]
        if len(bits) == 1:
            lowbit.quantize(model, method, bits[0])
        else:
            make_adaptive(model, bits, method)
            objective = JointObjective(model, AdaptiveSettings(bits=tuple(bits)))
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        if objective is None:
            loss = F.cross_entropy(model(images), labels)
        else:
            loss, _ = objective(images, labels, 0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def seconds(step: Step, images: torch.Tensor, labels: torch.Tensor) -> float:
    start = time.perf_counter()
    step(images, labels)
    if images.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="METHOD:BITS (repeatable)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    configs = args.config or list(DEFAULT_CONFIGS)

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, *SHAPE, generator=generator).to(args.device)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=generator).to(args.device)
    baseline = make_step(None, args.device)
    steps = {config: make_step(config, args.device) for config in configs}
    for _ in range(2):  # warm-up: allocator, caches, BatchNorm statistics
        for step in (baseline, *steps.values()):
            step(images, labels)
    ratios: dict[str, list[float]] = {config: [] for config in configs}
    float_times = []
    for _ in range(args.repeats):
        base = seconds(baseline, images, labels)
        float_times.append(base)
        for config, step in steps.items():
            ratios[config].append(seconds(step, images, labels) / base)
    milliseconds = statistics.median(float_times) * 1e3
    print(f"ResNet-20, batch {BATCH}, {args.device}: float step {milliseconds:.1f} ms "
          f"(median of {args.repeats}); ratio to it:")
    values = {config: round(statistics.median(r), 3) for config, r in ratios.items()}
    for config, value in values.items():
        target = TARGETS.get(config)
        print(f"  {config:<20} {value:6.2f}" + (f"  (target <= {target})" if target else ""))
    targets = {config: TARGETS[config] for config in configs if config in TARGETS}
    print(json.dumps({"bench": "train_step", "values": values, "targets": targets}))


if __name__ == "__main__":
    main()
