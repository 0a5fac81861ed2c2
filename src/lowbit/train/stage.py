"""One stage of a run (float pre-training or quantized training), epoch by epoch.

Each epoch trains, evaluates the validation split (when the run holds one out) and the test
split, appends a line to ``metrics.jsonl`` and writes ``last.pt``; sampled steps add their
quantizers' state (``lowbit.train.dynamics``), and with the tensorboard package installed
every record also goes to ``tensorboard/<stage>/``. ``best.pt`` is the
quantized epoch with the best validation top-1; without a validation split it is the last
epoch, so the test split never chooses a checkpoint.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

import lowbit
from lowbit.adaptive import JointObjective
from lowbit.adaptive.evaluation import evaluate_adaptive
from lowbit.train import distributed
from lowbit.train.build import stage_optimizer
from lowbit.train.checks import amp_dtype
from lowbit.train.dynamics import DynamicsSampler, sampling_interval
from lowbit.train.loop import evaluate, train_one_epoch
from lowbit.train.optim import build_scheduler
from lowbit.train.run_config import RunConfig

if TYPE_CHECKING:
    from lowbit.train.run import Run

logger = logging.getLogger("lowbit")

STAGES = ("float", "quant")


def stage_length(config: RunConfig, epochs: int, batches: int) -> tuple[int, int]:
    """``(epochs, steps per epoch)`` the stage trains: ``max_steps`` caps the steps of the
    whole stage, so a short run trains one shorter epoch, or fewer whole ones (a schedule
    over whole epochs ends where it should)."""
    cap = config.max_steps
    if cap is None or cap >= epochs * batches:
        return epochs, batches
    if cap < batches:
        return 1, cap
    return cap // batches, batches


def _trained_model(run: Run, model: nn.Module, stage: str):
    """The module the steps call and the joint objective of adaptive training (else None)."""
    config = run.config
    adaptive = config.adaptive if stage == "quant" else None
    if adaptive is None:
        trained = distributed.wrap(model, run.group)
        return (torch.compile(trained) if config.compile else trained), None
    # DDP wraps the joint step, which runs the model once per bit-width.
    objective = distributed.wrap(
        JointObjective(model, adaptive, config.label_smoothing), run.group,
        find_unused_parameters=True,
    )
    return model, objective


def _evaluate(run: Run, model: nn.Module, trained: nn.Module, loader, adaptive: bool, desc):
    show = run.group.is_main
    if not adaptive:
        return evaluate(trained, loader, desc=desc, show_progress=show, amp=amp_dtype(run.config))
    # top1 = the mean over the bit-widths; top1_by_bits each
    distributed.broadcast_buffers(model, run.group)
    return evaluate_adaptive(trained, loader, show_progress=show)


def run_stage(run: Run, model: nn.Module, stage: str, epochs: int, lr: float, checkpoint) -> None:
    """Train ``model`` for the remaining epochs of ``stage``, checkpointing every epoch."""
    config, data, state = run.config, run.data, run.state
    epochs, steps = stage_length(config, epochs, len(data.train))
    optimizer = stage_optimizer(model, config, stage, lr)
    scheduler = build_scheduler(optimizer, steps, epochs, config.schedule, lr)
    if state.stage != stage:
        state.stage, state.epoch, state.best_top1 = stage, 0, -1.0
    elif checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    trained, objective = _trained_model(run, model, stage)
    adaptive = objective is not None
    label = "float" if stage == "float" else f"{config.method} {config.bits_label}-bit"
    dynamics = None
    if run.run_dir is not None:  # rank 0
        every = sampling_interval(config.dynamics_every, epochs * steps)
        dynamics = DynamicsSampler.for_model(
            model, every, run.log, fields={"stage": stage}, watch_inputs=not config.compile
        )
    # Epochs and sampled steps go to metrics.jsonl (and TensorBoard) through run.log.
    run.start_stage_log(stage, state.epoch * steps)
    for epoch in range(state.epoch, epochs):
        torch.manual_seed(config.seed * 1000 + STAGES.index(stage) * 100 + epoch)
        start = time.perf_counter()
        desc = f"{label} epoch {epoch + 1}/{epochs}"
        train_metrics = train_one_epoch(
            trained, data.train, optimizer, scheduler, epoch, epochs,
            config.label_smoothing, desc=desc, show_progress=run.group.is_main,
            objective=objective, amp=amp_dtype(config), steps=steps,
            progress_seconds=config.progress_seconds, dynamics=dynamics,
        )
        val_metrics = None
        if data.val is not None:
            val_metrics = _evaluate(run, model, trained, data.val, adaptive, "validation")
        test_metrics = _evaluate(run, model, trained, data.test, adaptive, "test")
        seconds = time.perf_counter() - start
        state.epoch = epoch + 1
        state.seconds[stage] = state.seconds.get(stage, 0.0) + seconds
        val_record = {f"val_{k}": v for k, v in (val_metrics or {}).items()}
        run.log(
            {
                "kind": "epoch", "stage": stage, "epoch": epoch + 1, "step": (epoch + 1) * steps,
                "lr": scheduler.get_last_lr()[0],
                **train_metrics, **val_record, **test_metrics, "seconds": round(seconds, 3),
            }
        )
        val_text = f"  val top-1 {val_metrics['top1']:6.2f}%" if val_metrics else ""
        run.say(
            f"{label:>14} epoch {epoch + 1:>3}/{epochs}  loss {train_metrics['train_loss']:.3f}"
            f"{val_text}  test top-1 {test_metrics['top1']:6.2f}%  ({seconds:.1f}s)"
        )
        _save_epoch(run, model, optimizer, scheduler, stage, epochs, val_metrics, test_metrics)


def _save_epoch(run: Run, model, optimizer, scheduler, stage, epochs, val_metrics, test_metrics):
    """``last.pt`` always; ``best.pt`` on a better validation top-1 (the last epoch without
    validation); ``float.pt`` at the end of the float stage."""
    state = run.state
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "config": run.config.to_dict(),
        "stage": stage,  # float.pt holds a float model although config names a method
        "lowbit_version": lowbit.__version__,
    }
    metrics = {**test_metrics, **({"val_top1": val_metrics["top1"]} if val_metrics else {})}
    finished = state.epoch == epochs
    chosen = val_metrics["top1"] if val_metrics else None
    if chosen is not None and chosen > state.best_top1:
        state.best_top1 = chosen
        if stage == "quant":
            run.save("best.pt", {**payload, "metrics": metrics})
    elif chosen is None and finished and stage == "quant":
        run.save("best.pt", {**payload, "metrics": metrics})
    if finished:
        state.results[stage] = metrics
        if stage == "float":
            run.save("float.pt", {**payload, "metrics": metrics})
    run.save("last.pt", {**payload, "run_state": state.__dict__})
