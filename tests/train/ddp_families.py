"""Run by ``test_distributed.py`` under torchrun (2 CPU processes, gloo): one tiny model per
quantizer family trains a few steps in DistributedDataParallel, each rank on its own batches.
Each rank writes ``OUT/rank<r>.json``: per run, the shapes of the quantizer parameters when
the model was quantized (before any data), when DDP wrapped it and at the end, whether they
are still the objects DDP wrapped, which of them training moved, and the state digest.

``calibrated`` runs set data-dependent steps from each rank's own first batch before the
wrap, as ``lowbit train`` does (DDP then broadcasts rank 0's); ``lazy`` runs leave them to the
first forward after the wrap (every rank gets the same first batch), where a per-channel step
that took its shape from data would be resized under DDP.

    torchrun --standalone --nproc_per_node=2 tests/train/ddp_families.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.train import distributed

STEPS = 3
BATCH = 8
# name: (method, bits, options of lowbit.quantize, calibrated). The first and last layers get
# each method's own 8-bit treatment (maxscale for the APoT family). CoQuant is
# tests/adaptive/test_distributed_joint.py.
PER_CHANNEL = {"weight_options": {"per_channel": True}}
RUNS = {
    "apot": ("apot", 3, {}, True),  # RCF: alpha of weights and inputs
    "uniq": ("uniq", 2, {}, True),  # kernel-wise steps
    "uniq-lazy": ("uniq", 2, {}, False),
    "lsq": ("lsq", 3, PER_CHANNEL, True),
    "lsq-lazy": ("lsq", 3, PER_CHANNEL, False),
    "pact": ("pact", 4, {"input_options": {"alpha": 0.5}}, True),  # alpha that clips
    "rq": ("rq", 3, {}, True),  # alpha, sigma
    "srq-dropbits": ("srq-dropbits", 3, {"weight_options": {"l0_lambda": 1e-2}}, True),
}


def tiny_model() -> nn.Module:
    # Four layers of 4, 6, 5 and 10 output channels; the third one's input is signed.
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 10),
    )


def quantizer_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if "quantizer" in name}


def shapes(parameters: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {name: list(p.shape) for name, p in parameters.items()}


def batches(rank: int, shared_first: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for step in range(STEPS):
        seed = 1000 + step if shared_first and step == 0 else 100 * (rank + 1) + step
        gen = torch.Generator().manual_seed(seed)
        out.append((torch.randn(BATCH, 3, 8, 8, generator=gen),
                    torch.randint(0, 10, (BATCH,), generator=gen)))
    return out


def train(group: distributed.ProcessGroup, method: str, bits: int, options: dict,
          calibrated: bool) -> dict:
    torch.manual_seed(group.rank)  # different starting weights: DDP must make them common
    model = lowbit.quantize(tiny_model(), method, bits, **options)
    built = shapes(quantizer_parameters(model))
    hooks = lowbit.hooks(model)
    data = batches(group.rank, shared_first=not calibrated)
    if calibrated:
        hooks.calibrate([x for x, _ in data[:1]], 1)
    ddp = distributed.wrap(model, group)
    wrapped = quantizer_parameters(model)
    start = {name: p.detach().clone() for name, p in wrapped.items()}
    # Adam, small quantizer steps: an RQ / SRQ scale of a few 1e-3 must stay positive.
    optimizer = torch.optim.Adam(lowbit.param_groups(model, lr=1e-3, quantizer_lr=1e-4))
    torch.manual_seed(7)  # the same noise (RQ, DropBits) on every rank
    for step, (x, y) in enumerate(data):
        hooks.set_progress(step / STEPS)
        loss = F.cross_entropy(ddp(x), y) + hooks.regularization_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = quantizer_parameters(model)
    return {
        "built": built,
        "wrapped": shapes(wrapped),
        "final": shapes(final),
        "same_objects": list(final) == list(wrapped)
        and all(final[n] is wrapped[n] for n in final),
        "moved": sorted(n for n, p in final.items()
                        if p.shape != start[n].shape or not torch.equal(p.detach(), start[n])),
        "digest": distributed.state_digest(model),
        "ranks_agree": distributed.ranks_agree(model, group),
    }


def main(out: Path) -> None:
    group = distributed.setup(torch.device("cpu"))
    try:
        results = {name: train(group, *run) for name, run in RUNS.items()}
    finally:
        distributed.teardown(group)
    (out / f"rank{group.rank}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
