"""A training run: data, model, optional float pre-training, quantization, fine-tuning.

One run is one directory: ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per epoch
and per sampled step: ``lowbit.train.metrics``; with the tensorboard package also
``tensorboard/``),
``last.pt`` (after every epoch, atomic), ``best.pt``, ``float.pt`` (end of float
pre-training) and ``summary.json``. ``resume(run_dir)`` continues from ``last.pt``; every
epoch reseeds from ``(seed, stage, epoch)``, so a resumed run ends bitwise equal to an
uninterrupted one.

Everything is checked (``checks.py``) before the directory is created. A run that stops
before its first checkpoint leaves no directory behind; one that stops later keeps its
checkpoints and says in ``summary.json`` that it failed (or was interrupted) and why.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lowbit.adaptive.switchable import expand_batchnorms
from lowbit.data import DataBundle
from lowbit.errors import LowbitError
from lowbit.nn.calibrate import calibrate
from lowbit.train import distributed
from lowbit.train.build import data_from_config, model_from_config, quantize_from_config
from lowbit.train.checkpoint import load_checkpoint, load_matching, save_checkpoint
from lowbit.train.checks import (
    check_config,
    check_output_dir,
    check_stages,
    pick_device,
    stage_plan,
)
from lowbit.train.config import parse_override
from lowbit.train.distributed import ProcessGroup
from lowbit.train.hooks import learned_bits
from lowbit.train.metrics import METRICS, trim_to_checkpoint
from lowbit.train.run_config import RunConfig
from lowbit.train.stage import STAGES, run_stage
from lowbit.train.tensorboard import TensorBoardLog

logger = logging.getLogger("lowbit")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``resume_command`` continues it (``None``: nothing was saved)."""

    def __init__(self, resume_command: str | None) -> None:
        super().__init__(resume_command)
        self.resume_command = resume_command


@dataclass
class RunState:
    """What a run knows between epochs and across a resume."""

    stage: str = "float"
    epoch: int = 0  # epochs completed in ``stage``
    best_top1: float = -1.0
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> final metrics
    seconds: dict[str, float] = field(default_factory=dict)


def new_run_dir(config: RunConfig) -> Path:
    label = config.method if config.epochs else "float"
    bits = f"-{config.bits_label.replace('/', '-')}bit" if config.epochs else ""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.out) / f"{stamp}-{config.model.name}-{label}{bits}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


@dataclass
class Run:
    """One run's shared context; ``run_dir`` is ``None`` on processes other than rank 0,
    which write nothing."""

    config: RunConfig
    run_dir: Path | None
    group: ProcessGroup
    data: DataBundle
    state: RunState
    board: TensorBoardLog | None = None  # the current stage's, with the tensorboard package

    def log(self, record: dict[str, Any]) -> None:
        if self.run_dir is not None:
            with open(self.run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.board is not None:
                self.board.write(record)

    def start_stage_log(self, stage: str, first_step: int) -> None:
        """Send the records of ``stage``, resumed at ``first_step``, to its TensorBoard
        directory too (rank 0, when the tensorboard package is installed)."""
        self.close_log()
        if self.run_dir is not None:
            self.board = TensorBoardLog.open(self.run_dir, stage, first_step)

    def close_log(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None

    def save(self, name: str, payload: dict[str, Any]) -> None:
        if self.run_dir is not None:
            save_checkpoint(self.run_dir / name, payload)

    def say(self, text: str) -> None:
        if self.group.is_main:
            logger.info(text)


def run_training(
    config: RunConfig | Mapping[str, Any], run_dir: Path | None = None
) -> dict[str, Any]:
    """Train as ``config`` (parsed, or a complete mapping such as ``resolve_config`` gives)
    says, in ``run_dir`` (a new one when ``None``; an existing one with a
    ``last.pt`` is resumed). Under ``torchrun`` every process trains, rank 0 writes.
    Returns the summary also written to ``summary.json``."""
    config = check_config(config)
    if run_dir is None:
        check_output_dir(config.out)
    group = distributed.setup(pick_device(config.device))
    try:
        return _train(config, run_dir, group)
    finally:
        distributed.teardown(group)


def _train(config: RunConfig, run_dir: Path | None, group: ProcessGroup) -> dict[str, Any]:
    device = group.device
    data = data_from_config(config, device, group.rank, group.world_size)
    check_stages(config, data)
    created = run_dir is None
    run = Run(config, None, group, data, RunState())
    try:
        if created and group.is_main:
            run.run_dir = new_run_dir(config)
            (run.run_dir / "config.yaml").write_text(
                yaml.safe_dump(config.to_dict(), sort_keys=False)
            )
        elif group.is_main:
            run.run_dir = run_dir
        checkpoint = None
        if run_dir is not None and (run_dir / "last.pt").exists():  # resumed: every rank loads
            checkpoint = load_checkpoint(run_dir / "last.pt", map_location=device)
            run.state = RunState(**checkpoint["run_state"])
            if run.run_dir is not None:  # what the stopped process logged after last.pt
                trim_to_checkpoint(run.run_dir, run.state.stage, run.state.epoch)
        if run.run_dir is not None:
            logger.info("run directory: %s", run.run_dir)
        model = _train_stages(run, checkpoint)
    except BaseException as error:
        run.close_log()  # before a directory without a checkpoint is removed
        _record_failure(run, error, created)
        raise
    run.close_log()
    return _write_summary(run, learned_bits(model))


def _train_stages(run: Run, checkpoint: dict[str, Any] | None) -> nn.Module:
    model = None
    for stage, epochs, lr in stage_plan(run.config):
        if STAGES.index(stage) < STAGES.index(run.state.stage):
            continue  # finished before the resume
        model = _prepare_model(run, stage, checkpoint, model)
        run_stage(run, model, stage, epochs, lr, checkpoint)
        checkpoint = None
    if not distributed.ranks_agree(model, run.group):
        raise RuntimeError("distributed processes ended with different weights")
    return model


def resume_command(run_dir: Path) -> str:
    return f"lowbit train --resume {shlex.quote(str(run_dir))}"


def _record_failure(run: Run, error: BaseException, created: bool) -> None:
    """A run that stopped before its first checkpoint leaves nothing (when this call made its
    directory); a later one is marked failed or interrupted in ``summary.json``. Ctrl-C
    becomes ``RunInterrupted`` with the command that resumes."""
    run_dir = run.run_dir
    saved = run_dir is not None and (run_dir / "last.pt").is_file()
    if run_dir is not None and not saved and created:
        shutil.rmtree(run_dir, ignore_errors=True)
    interrupted = isinstance(error, KeyboardInterrupt)
    if saved:
        detail = " ".join(str(error).split()) or type(error).__name__
        status = {
            "status": "interrupted" if interrupted else "failed",
            "error": None if interrupted else f"{type(error).__name__}: {detail}",
            "stage": run.state.stage,
            "epochs_done": run.state.epoch,
            "resume": resume_command(run_dir),
            "run_dir": str(run_dir),
        }
        (run_dir / "summary.json").write_text(json.dumps(status, indent=2) + "\n")
    if interrupted and not isinstance(error, RunInterrupted) and run.group.is_main:
        raise RunInterrupted(resume_command(run_dir) if saved else None) from error


def _prepare_model(run: Run, stage: str, checkpoint, previous: nn.Module | None) -> nn.Module:
    """The (unwrapped) model for ``stage``: resumed from ``checkpoint``, the float model of the
    stage just finished, or a fresh one (initialized from ``config.init`` when given)."""
    config, data = run.config, run.data
    resuming = checkpoint is not None and run.state.stage == stage
    if previous is not None:
        model = previous
    else:
        torch.manual_seed(config.seed)
        model = model_from_config(config, data.num_classes, data.in_channels).to(run.group.device)
    if stage == "float":
        if resuming:
            model.load_state_dict(checkpoint["model"])
        return model
    quantize_from_config(model, config)
    if resuming:
        model.load_state_dict(checkpoint["model"])
        return model
    if config.init:
        source = load_checkpoint(config.init, run.group.device)["model"]
        if config.adaptive is not None:  # one BatchNorm per bit-width: copy each
            source = expand_batchnorms(model, source)
        loaded, skipped = load_matching(model, source)
        run.say(
            f"initialized {len(loaded)} tensors from {config.init}; "
            f"skipped {len(skipped)}: {', '.join(skipped) or '-'}"
        )
    torch.manual_seed(config.seed)
    # Under DDP, steps set from data are set before the wrap, which broadcasts rank 0's: on the
    # first forward after it each rank would set them from its own batch, and they would differ.
    # Under torch.compile, setting them reads data-dependent values back to Python, which would
    # split the compiled graph on the first step and leave every layer in its own graph.
    first_batch = run.group.enabled or config.compile
    calibrate(model, data.train, max(config.calibrate_batches, int(first_batch)))
    return model


def _summary_bits(config: RunConfig) -> int | list[int]:
    return config.bits if config.adaptive is None else list(config.adaptive.bits)


def _write_summary(run: Run, layer_bits: dict[str, str]) -> dict[str, Any]:
    config, state = run.config, run.state
    final = state.results.get("quant") or state.results["float"]
    summary = {
        "status": "finished",
        "method": config.method if "quant" in state.results else "float",
        "bits": _summary_bits(config) if "quant" in state.results else 32,
        "model": config.model.name,
        "data": config.data.name,
        "top1": final["top1"],
        "top5": final["top5"],
        "n": final["n"],
        "val_top1": final.get("val_top1"),  # the top-1 of the validation split (held out)
        "val_size": run.data.val_size,
        "skipped_files": run.data.skipped_files,
        "float_top1": state.results.get("float", {}).get("top1"),
        "seconds": {k: round(v, 2) for k, v in state.seconds.items()},
        "world_size": run.group.world_size,
        **({"learned_bits": layer_bits} if layer_bits else {}),
        **({"top1_by_bits": final["top1_by_bits"]} if "top1_by_bits" in final else {}),
        "paper": config.paper,
        "run_dir": str(run.run_dir) if run.run_dir else None,
    }
    if run.run_dir is not None:
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# What ``--resume`` may change: where things run and how they are shown, never what is trained.
RESUME_SETTINGS = ("device", "data.dir", "data.workers", "progress_seconds")


def resume(run_dir: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Continue the interrupted run in ``run_dir`` from its last completed epoch, with
    ``overrides`` (``"KEY=VALUE"``) of the ``RESUME_SETTINGS`` only."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise LowbitError(f"{str(run_dir)!r} is not a lowbit run directory (no config.yaml)")
    if not (run_dir / "last.pt").is_file():
        raise LowbitError(
            f"{str(run_dir)!r} has no last.pt to resume from (it ended before its first "
            "epoch); start the run again"
        )
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    changes = []
    for text in overrides:
        key = text.partition("=")[0]
        if key not in RESUME_SETTINGS:
            raise LowbitError(
                f"--resume continues {str(run_dir)!r} as its config.yaml says and changes only "
                f"{', '.join(RESUME_SETTINGS)}, not {key}; for other changes start a new run: "
                f"lowbit train {shlex.quote(str(run_dir / 'config.yaml'))} --set ..."
            )
        changes.append(parse_override(text))
    config = RunConfig.stored(stored, *changes)
    return run_training(config, run_dir)
