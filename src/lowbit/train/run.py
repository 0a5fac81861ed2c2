"""A training run: data, model, optional float pre-training, quantization, fine-tuning.

One run is one directory: ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per epoch),
``last.pt`` (after every epoch, atomic), ``best.pt``, ``float.pt`` (end of float
pre-training) and ``summary.json``. ``resume(run_dir)`` continues from ``last.pt``; every
epoch reseeds from ``(seed, stage, epoch)``, so a resumed run ends bitwise equal to an
uninterrupted one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm import tqdm

import lowbit
from lowbit.adaptive import JointObjective, adaptive_settings, make_adaptive
from lowbit.adaptive.evaluation import evaluate_adaptive
from lowbit.adaptive.switchable import check_switchable_method, expand_batchnorms
from lowbit.data import DataBundle, available_datasets
from lowbit.errors import LowbitError
from lowbit.models import available_models
from lowbit.nn.calibrate import calibrate
from lowbit.quant.registry import get_method
from lowbit.train import distributed
from lowbit.train.build import data_from_config, model_from_config
from lowbit.train.checkpoint import load_checkpoint, load_matching, save_checkpoint
from lowbit.train.config import check_numbers
from lowbit.train.distributed import ProcessGroup
from lowbit.train.loop import evaluate, train_one_epoch
from lowbit.train.optim import build_optimizer, build_scheduler, lr_factor

STAGES = ("float", "quant")


@dataclass
class RunState:
    """What a run knows between epochs and across a resume."""

    stage: str = "float"
    epoch: int = 0  # epochs completed in ``stage``
    best_top1: float = -1.0
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> final metrics
    seconds: dict[str, float] = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LowbitError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LowbitError("device cuda was asked for, but PyTorch sees no GPU here")
    return device


def check_config(config: dict[str, Any]) -> None:
    """Fail on bad names, bits and numbers before anything is written or trained."""
    check_numbers(config)
    model_names, data_names = available_models(), available_datasets()
    if config["model"]["name"] not in model_names:
        raise LowbitError(
            f"unknown model {config['model']['name']!r}; available: {', '.join(model_names)}"
        )
    if config["data"]["name"] not in data_names:
        raise LowbitError(
            f"unknown data set {config['data']['name']!r}; available: {', '.join(data_names)}"
        )
    if config["epochs"]:
        method = get_method(config["method"])
        method.check_bits(config["bits"])
        if config["first_last_bits"] is not None:
            method.check_bits(config["first_last_bits"], "first_last_bits")
        if adaptive_settings(config) is not None:
            check_switchable_method(config["method"])
    _stage_plan(config)
    lr_factor(0, 1, 1, config["schedule"])
    amp_dtype(config)
    if config.get("compile") and adaptive_settings(config) is not None:
        raise LowbitError("compile: true trains one bit-width; set compile: false with adaptive")


AMP_DTYPES = {None: None, "bf16": torch.bfloat16}


def amp_dtype(config: dict[str, Any]) -> torch.dtype | None:
    """The autocast dtype ``config["amp"]`` names (``None``: float32 throughout)."""
    amp = config.get("amp")  # absent from configs written before the key existed
    if amp not in AMP_DTYPES:
        raise LowbitError(f"amp must be bf16 or null, got {amp!r}")
    return AMP_DTYPES[amp]


def bits_label(config: dict[str, Any]) -> str:
    """``"4"``, or ``"8/6/4/2"`` for a network trained at several bit-widths."""
    adaptive = adaptive_settings(config)
    return str(config["bits"]) if adaptive is None else "/".join(map(str, adaptive.bits))


def new_run_dir(config: dict[str, Any]) -> Path:
    label = config["method"] if config["epochs"] else "float"
    bits = f"-{bits_label(config).replace('/', '-')}bit" if config["epochs"] else ""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config["out"]) / f"{stamp}-{config['model']['name']}-{label}{bits}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


def quantize_from_config(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    options = {
        "overrides": config["overrides"],
        "weight_options": config["weight_options"],
        "input_options": config["input_options"],
        "float_downsample": config["float_downsample"],
    }
    adaptive = adaptive_settings(config)
    if adaptive is not None:  # one network for every bit-width in adaptive.bits
        return make_adaptive(
            model, adaptive.bits, config["method"], config["first_last_bits"], **options
        )
    return lowbit.quantize(
        model, config["method"], config["bits"], config["first_last_bits"], **options
    )


def _stage_plan(config: dict[str, Any]) -> list[tuple[str, int, float]]:
    plan = []
    if config["float_epochs"] and config["init"] is None:
        plan.append(("float", config["float_epochs"], config["float_lr"]))
    if config["epochs"]:
        plan.append(("quant", config["epochs"], config["optimizer"]["lr"]))
    if not plan:
        raise LowbitError("nothing to train: set epochs or float_epochs above 0")
    return plan


@dataclass
class Run:
    """One run's shared context; ``run_dir`` is ``None`` on processes other than rank 0,
    which write nothing."""

    config: dict[str, Any]
    run_dir: Path | None
    group: ProcessGroup
    data: DataBundle
    state: RunState

    def log(self, record: dict[str, Any]) -> None:
        if self.run_dir is not None:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def save(self, name: str, payload: dict[str, Any]) -> None:
        if self.run_dir is not None:
            save_checkpoint(self.run_dir / name, payload)

    def say(self, text: str) -> None:
        if self.group.is_main:
            tqdm.write(text)


def run_training(config: dict[str, Any], run_dir: Path | None = None) -> dict[str, Any]:
    """Train as ``config`` says, in ``run_dir`` (a new one when ``None``; an existing one with a
    ``last.pt`` is resumed). Under ``torchrun`` every process trains, rank 0 writes.
    Returns the summary also written to ``summary.json``."""
    check_config(config)
    group = distributed.setup(pick_device(config["device"]))
    try:
        return _train(config, run_dir, group)
    finally:
        distributed.teardown(group)


def _train(config: dict[str, Any], run_dir: Path | None, group: ProcessGroup) -> dict[str, Any]:
    device = group.device
    data = data_from_config(config, device, group.rank, group.world_size)
    build_every_stage(config, data.num_classes, data.in_channels)
    if run_dir is None and group.is_main:
        run_dir = new_run_dir(config)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    state, checkpoint = RunState(), None
    if run_dir is not None and (run_dir / "last.pt").exists():
        checkpoint = load_checkpoint(run_dir / "last.pt", map_location=device)
        state = RunState(**checkpoint["run_state"])
    if not group.is_main:
        run_dir = None
    run = Run(config, run_dir, group, data, state)
    model = None
    for stage, epochs, lr in _stage_plan(config):
        if STAGES.index(stage) < STAGES.index(state.stage):
            continue  # finished before the resume
        model = _prepare_model(run, stage, checkpoint, model)
        run_stage(run, model, stage, epochs, lr, checkpoint)
        checkpoint = None
    if not distributed.ranks_agree(model, group):
        raise RuntimeError("distributed processes ended with different weights")
    return _write_summary(run, learned_bits(model))


def _prepare_model(run: Run, stage: str, checkpoint, previous: nn.Module | None) -> nn.Module:
    """The (unwrapped) model for ``stage``: resumed from ``checkpoint``, the float model of the
    stage just finished, or a fresh one (initialized from ``config["init"]`` when given)."""
    config, data = run.config, run.data
    resuming = checkpoint is not None and run.state.stage == stage
    if previous is not None:
        model = previous
    else:
        torch.manual_seed(config["seed"])
        model = model_from_config(config, data.num_classes, data.in_channels).to(run.group.device)
    if stage == "float":
        if resuming:
            model.load_state_dict(checkpoint["model"])
        return model
    quantize_from_config(model, config)
    if resuming:
        model.load_state_dict(checkpoint["model"])
        return model
    if config["init"]:
        source = load_checkpoint(config["init"], run.group.device)["model"]
        if adaptive_settings(config) is not None:  # one BatchNorm per bit-width: copy each
            source = expand_batchnorms(model, source)
        loaded, skipped = load_matching(model, source)
        run.say(
            f"initialized {len(loaded)} tensors from {config['init']}; "
            f"skipped {len(skipped)}: {', '.join(skipped) or '-'}"
        )
    torch.manual_seed(config["seed"])
    calibrate(model, data.train, config["calibrate_batches"])
    return model


def build_every_stage(config: dict[str, Any], num_classes: int, in_channels: int) -> None:
    """Build each stage's model (quantized where the stage is) and optimizer on the meta
    device, so that a bad model option, quantizer option or override fails before a run
    directory exists or a stage trains."""
    with torch.device("meta"):  # shapes only: nothing is allocated or initialized
        model = model_from_config(config, num_classes, in_channels)
    for stage, _, lr in _stage_plan(config):
        if stage == "quant":
            quantize_from_config(model, config)  # quantizers move to the layers' device
        stage_optimizer(model, config, stage, lr)


def stage_optimizer(
    model: nn.Module, config: dict[str, Any], stage: str, lr: float
) -> torch.optim.Optimizer:
    """The optimizer of ``stage``: the float stage's own settings, or the quantized one's."""
    base = config["float_optimizer"] if stage == "float" else config["optimizer"]
    return build_optimizer(model, {**config, "optimizer": {**base, "lr": lr}})


def run_stage(run: Run, model: nn.Module, stage: str, epochs: int, lr: float, checkpoint) -> None:
    """Train ``model`` for the remaining epochs of ``stage``, checkpointing every epoch."""
    config, data, state = run.config, run.data, run.state
    optimizer = stage_optimizer(model, config, stage, lr)
    scheduler = build_scheduler(optimizer, len(data.train), epochs, config["schedule"], lr)
    if state.stage != stage:
        state.stage, state.epoch, state.best_top1 = stage, 0, -1.0
    elif checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
    if config.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    adaptive = adaptive_settings(config) if stage == "quant" else None
    if adaptive is None:
        trained, objective = distributed.wrap(model, run.group), None
        if config.get("compile"):
            trained = torch.compile(trained)
    else:  # DDP wraps the joint step, which runs the model once per bit-width
        trained = model
        objective = distributed.wrap(
            JointObjective(model, adaptive, config["label_smoothing"]), run.group,
            find_unused_parameters=True,
        )
    label = "float" if stage == "float" else f"{config['method']} {bits_label(config)}-bit"
    for epoch in range(state.epoch, epochs):
        torch.manual_seed(config["seed"] * 1000 + STAGES.index(stage) * 100 + epoch)
        start = time.perf_counter()
        train_metrics = train_one_epoch(
            trained,
            data.train,
            optimizer,
            scheduler,
            epoch,
            epochs,
            config["label_smoothing"],
            desc=f"{label} epoch {epoch + 1}/{epochs}",
            show_progress=run.group.is_main,
            objective=objective,
            amp=amp_dtype(config),
        )
        if adaptive is None:
            test_metrics = evaluate(
                trained, data.test, show_progress=run.group.is_main, amp=amp_dtype(config)
            )
        else:  # top1 = the mean over the bit-widths; top1_by_bits each
            distributed.broadcast_buffers(model, run.group)
            test_metrics = evaluate_adaptive(trained, data.test, show_progress=run.group.is_main)
        seconds = time.perf_counter() - start
        state.epoch = epoch + 1
        state.seconds[stage] = state.seconds.get(stage, 0.0) + seconds
        run.log(
            {
                "stage": stage,
                "epoch": epoch + 1,
                "lr": scheduler.get_last_lr()[0],
                **train_metrics,
                **test_metrics,
                "seconds": round(seconds, 3),
            }
        )
        run.say(
            f"{label:>14} epoch {epoch + 1:>3}/{epochs}  loss {train_metrics['train_loss']:.3f}"
            f"  test top-1 {test_metrics['top1']:6.2f}%  ({seconds:.1f}s)"
        )
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "config": config,
            "stage": stage,  # float.pt holds a float model although config names a method
            "lowbit_version": lowbit.__version__,
        }
        if test_metrics["top1"] > state.best_top1:
            state.best_top1 = test_metrics["top1"]
            if stage == "quant":
                run.save("best.pt", {**payload, "metrics": test_metrics})
        if state.epoch == epochs:
            state.results[stage] = dict(test_metrics)
            if stage == "float":
                run.save("float.pt", {**payload, "metrics": test_metrics})
        run.save("last.pt", {**payload, "run_state": state.__dict__})


def learned_bits(model: nn.Module) -> dict[str, str]:
    """Bit-widths the quantizers learned (DropBits, SRQ §3.5), by layer: every module with a
    ``learned_bits()`` method reports for the layer that owns it."""
    return {
        name.split(".weight_quantizer")[0]: module.learned_bits()
        for name, module in model.named_modules()
        if callable(getattr(module, "learned_bits", None))
    }


def _summary_bits(config: dict[str, Any]) -> int | list[int]:
    adaptive = adaptive_settings(config)
    return config["bits"] if adaptive is None else list(adaptive.bits)


def _write_summary(run: Run, layer_bits: dict[str, str]) -> dict[str, Any]:
    config, state = run.config, run.state
    final = state.results.get("quant") or state.results["float"]
    summary = {
        "method": config["method"] if "quant" in state.results else "float",
        "bits": _summary_bits(config) if "quant" in state.results else 32,
        "model": config["model"]["name"],
        "data": config["data"]["name"],
        "top1": final["top1"],
        "top5": final["top5"],
        "n": final["n"],
        "float_top1": state.results.get("float", {}).get("top1"),
        "seconds": {k: round(v, 2) for k, v in state.seconds.items()},
        "world_size": run.group.world_size,
        **({"learned_bits": layer_bits} if layer_bits else {}),
        **({"top1_by_bits": final["top1_by_bits"]} if "top1_by_bits" in final else {}),
        "paper": config["paper"],
        "run_dir": str(run.run_dir) if run.run_dir else None,
    }
    if run.run_dir is not None:
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def resume(run_dir: str | Path) -> dict[str, Any]:
    """Continue the interrupted run in ``run_dir`` from its last completed epoch."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise LowbitError(f"{str(run_dir)!r} is not a lowbit run directory (no config.yaml)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return run_training(config, run_dir)
