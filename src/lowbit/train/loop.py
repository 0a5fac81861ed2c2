"""One training epoch and one evaluation pass, shared by every method and command."""

from __future__ import annotations

from contextlib import nullcontext
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.train.hooks import QuantizerHooks
from lowbit.train.progress import LOG_INTERVAL_SECONDS, Progress

if TYPE_CHECKING:
    from lowbit.train.dynamics import DynamicsSampler

# A training objective other than cross-entropy on ``model(images)`` (CoQuant's joint loss):
# ``objective(images, labels, progress) -> (loss, logits)``, ``progress`` the fraction of
# training done; the logits are what the training top-1 counts. An nn.Module that runs the
# model inside its forward, so that DistributedDataParallel can wrap it whole (one forward per
# backward) however many passes it makes.
Objective = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def train_one_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    epochs: int,
    label_smoothing: float = 0.0,
    desc: str = "train",
    show_progress: bool = True,
    objective: Objective | None = None,
    amp: torch.dtype | None = None,
    steps: int | None = None,
    progress_seconds: float = LOG_INTERVAL_SECONDS,
    dynamics: DynamicsSampler | None = None,
) -> dict[str, float]:
    """Train for one epoch; returns mean loss and top-1 on the training batches.

    The loss is cross-entropy on ``model(images)`` unless an ``objective`` is given; the
    quantizers' regularization is added either way. ``amp`` (e.g. ``torch.bfloat16``) runs
    the forward and the loss under autocast. ``steps`` ends the epoch after that many
    batches (``max_steps``; ``None``: the whole loader), and schedules count epochs of that
    length. ``dynamics`` samples the quantizers on the steps it says are due (their step
    counted over the whole stage).

    Running sums stay on the device (no per-step ``.item()``), so the loop never waits on it;
    only a sampled step reads back its values.
    """
    model.train()
    loader.set_epoch(epoch)
    hooks = QuantizerHooks(model)
    steps = len(loader) if steps is None else min(steps, len(loader))
    loss_sum = correct = torch.zeros((), dtype=torch.float64)
    seen = 0
    report = Progress(islice(loader, steps), desc, steps, show_progress, progress_seconds)
    for step, (images, labels) in enumerate(report):
        stage_step = epoch * steps + step
        progress = stage_step / (epochs * steps)
        hooks.set_progress(progress)
        sampled = dynamics is not None and dynamics.due(stage_step)
        if sampled:
            lr = scheduler.get_last_lr()[0]  # the lr of this step
        with dynamics.watch() if sampled else nullcontext(), torch.autocast(
            images.device.type, dtype=amp, enabled=amp is not None
        ):
            if objective is None:
                logits = model(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
            else:
                loss, logits = objective(images, labels, progress)
            loss = loss + hooks.regularization_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if sampled:
            dynamics.record(stage_step, epoch + 1, loss, lr)
        if loss_sum.device != loss.device:
            loss_sum, correct = loss_sum.to(loss.device), correct.to(loss.device)
        loss_sum = loss_sum + loss.detach() * labels.numel()
        correct = correct + (logits.detach().argmax(1) == labels).sum()
        seen += labels.numel()
        report.update(step, seen, loss_sum, scheduler.get_last_lr()[0])
    return {
        "train_loss": float(loss_sum) / max(seen, 1),
        "train_top1": 100 * float(correct) / max(seen, 1),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    desc: str = "eval",
    show_progress: bool = True,
    amp: torch.dtype | None = None,
) -> dict[str, float]:
    """Top-1, top-5 (in %), mean cross-entropy and sample count over ``loader`` (the forward
    under ``amp`` autocast when given)."""
    was_training = model.training
    model.eval()
    loss_sum = top1 = top5 = 0.0
    seen = 0
    report = Progress(loader, desc, len(loader), show_progress)
    for step, (images, labels) in enumerate(report):
        with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None):
            logits = model(images).float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        best = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = best == labels[:, None]
        top1 += float(hits[:, 0].sum())
        top5 += float(hits.any(dim=1).sum())
        seen += labels.numel()
        report.update(step, seen)
    model.train(was_training)
    n = max(seen, 1)
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n, "loss": loss_sum / n, "n": seen}
