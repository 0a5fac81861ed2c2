"""Cost of one training step of each configuration relative to one float training step.

ResNet-20 at CIFAR shape (3x32x32, 10 classes), batch 128, SGD with momentum over every
parameter (the quantizers' alphas and step sizes included; lr 0, see ``make_step``); a step
is the trainer's: the quantizers' progress hook, forward, loss plus the quantizers'
regularization (``QuantizerHooks``), backward and optimizer step. Models are quantized as
users quantize them, ``lowbit.quantize(model, method, bits)`` with its defaults (8-bit first
and last layers).
Every configuration and the float model are built in the same process and timed
interleaved, each configuration's step right after a float step (float, A, float, B, ...),
so that a change in machine load hits both sides of a ratio; each figure is the median of
the per-pair ratios ``time(config step) / time(float step)``. Like the ``lowbit`` command,
the process keeps freed memory for reuse (``lowbit.allocator``).

A configuration is ``METHOD:BITS``: one bit-width (``apot:4``) or, for a method that can
switch, a bit-width set trained jointly (``coquant:8,6,4,2``: CoQuant Algorithm 1 with dynamic
teacher selection and block swapping, one step = every bit-width's forward and backward).
By default: every registered method at 2 and 4 bits (``maxscale`` is the APoT authors'
first/last-layer rule, not a method of its own) and CoQuant over {8, 6, 4, 2}.

    python bench/train_step.py [--config apot:4 --config coquant:8,6,4,2] [--repeats 7]
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
from lowbit.allocator import reuse_freed_memory
from lowbit.models import build_model
from lowbit.quant.registry import available_methods, get_method
from lowbit.train.hooks import QuantizerHooks

BATCH, CLASSES, SHAPE = 128, 10, (3, 32, 32)
DEFAULT_BITS = (2, 4)
NOT_A_METHOD = {"maxscale"}  # a first/last-layer rule (APoT authors' code)
# Issue 8: elementwise fake quantization costs at most a quarter of a float step; the relaxed
# methods (a noisy grid, RQ's sampling) at most 60%. Issue 6: one CoQuant step over
# B = {8, 6, 4, 2} costs at most 4.4 float steps.
METHOD_TARGETS = {"rq": 1.6, "srq": 1.6, "srq-dropbits": 1.6}
DEFAULT_TARGET = 1.25
SET_TARGETS = {"coquant:8,6,4,2": 4.4}
PROGRESS = 0.5  # the training fraction every timed step reports to annealing and schedules

Step = Callable[[torch.Tensor, torch.Tensor], None]


def default_configs() -> list[str]:
    configs = []
    for name in available_methods():
        if name in NOT_A_METHOD:
            continue
        method = get_method(name)
        configs += [f"{name}:{b}" for b in DEFAULT_BITS if method.min_bits <= b <= method.max_bits]
    if "coquant" in available_methods():
        configs.append("coquant:8,6,4,2")
    return configs


def target(config: str) -> float | None:
    method, _, bits = config.partition(":")
    if "," in bits:
        return SET_TARGETS.get(config)
    return METHOD_TARGETS.get(method, DEFAULT_TARGET)


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
    # lr 0: the optimizer does all its work, but every repeat times the same model (at a real
    # lr, repeated steps on one batch drive RQ's sigma of the 8-bit layers through zero).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    # As train_one_epoch does; on the float model the hooks find nothing and cost nothing.
    hooks = QuantizerHooks(model)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        hooks.set_progress(PROGRESS)
        if objective is None:
            loss = F.cross_entropy(model(images), labels)
        else:
            loss, _ = objective(images, labels, PROGRESS)
        loss = loss + hooks.regularization_loss()
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
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's)")
    args = parser.parse_args()
    reuse_freed_memory()  # as the lowbit command does, for both sides
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = args.config or default_configs()

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, *SHAPE, generator=generator).to(args.device)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=generator).to(args.device)
    baseline = make_step(None, args.device)
    steps = {config: make_step(config, args.device) for config in configs}
    for _ in range(2):  # warm-up: allocator, caches, data-initialized step sizes
        for step in (baseline, *steps.values()):
            step(images, labels)
    ratios: dict[str, list[float]] = {config: [] for config in configs}
    float_times = []
    for _ in range(args.repeats):
        for config, step in steps.items():
            base = seconds(baseline, images, labels)
            float_times.append(base)
            ratios[config].append(seconds(step, images, labels) / base)
    print(f"ResNet-20, batch {BATCH}, {args.device}, {torch.get_num_threads()} threads: float "
          f"step {statistics.median(float_times) * 1e3:.1f} ms (median of {len(float_times)}); "
          f"ratio to it, median of {args.repeats} (min-max):")
    values = {config: round(statistics.median(r), 3) for config, r in ratios.items()}
    targets = {config: t for config in configs if (t := target(config)) is not None}
    for config, value in values.items():
        spread = f"({min(ratios[config]):.2f}-{max(ratios[config]):.2f})"
        goal = f"  target <= {targets[config]}" if config in targets else ""
        print(f"  {config:<18} {value:6.2f}  {spread:<12}{goal}")
    print(json.dumps({"bench": "train_step", "values": values, "targets": targets}))


if __name__ == "__main__":
    main()
