"""Multi-process training with PyTorch's own DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node=N -m lowbit train ...`` sets ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK``; every process then trains on its own slice of each epoch, DDP averages the
gradients, and only rank 0 writes the run directory.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> ProcessGroup:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessGroup(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), device)


def wrap(model: nn.Module, group: ProcessGroup, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes.

    DDP broadcasts rank 0's parameters and buffers on construction, so anything a process
    computed alone before (e.g. quantizer calibration on its own batches) is made common.
    ``find_unused_parameters``: some parameters may get no gradient in a step (CoQuant's
    swapped blocks skip the student's BatchNorm).
    """
    if not group.enabled:
        return model
    device_ids = [group.device.index] if group.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def broadcast_buffers(model: nn.Module, group: ProcessGroup) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every process. DDP does it at the start of
    each forward of the module it wraps; a model trained through a wrapped objective and then
    tested unwrapped needs it once more."""
    if group.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def state_digest(model: nn.Module) -> str:
    """SHA-256 of every tensor in the state dict, bit for bit."""
    digest = hashlib.sha256()
    for name, tensor in unwrap(model).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def ranks_agree(model: nn.Module, group: ProcessGroup) -> bool:
    """Whether all processes hold bitwise identical weights and buffers."""
    if not group.enabled:
        return True
    digests: list[str | None] = [None] * group.world_size
    dist.all_gather_object(digests, state_digest(model))
    return len(set(digests)) == 1


def teardown(group: ProcessGroup) -> None:
    if group.enabled and dist.is_initialized():
        # Leave together: a process that tears down while its peer still talks to it makes
        # gloo abort the peer.
        dist.barrier()
        dist.destroy_process_group()
