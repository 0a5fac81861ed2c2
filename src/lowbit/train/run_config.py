"""The resolved run configuration as typed, frozen objects.

``config.py`` layers plain mappings (``DEFAULTS``, the method's preset, the recipe, ``--set``)
because recipes are data. ``RunConfig.parse`` turns the complete result into these objects
once, after checking every value, and every part of a run reads them: no module looks a key up
with a fallback. A stored config (``config.yaml``, a checkpoint's ``config``) is read with
``RunConfig.stored``, which first fills in the keys it predates (``config.LEGACY``, then
``DEFAULTS``). ``to_dict`` gives back the mapping that was parsed, to store again.

The field names are ``DEFAULTS``' keys; a test keeps the two in step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from lowbit.adaptive import AdaptiveSettings, adaptive_settings
from lowbit.train.config import check_values, load_run_config


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class ModelConfig:
    name: str
    options: Mapping[str, Any]  # the builder's keyword arguments


@dataclass(frozen=True)
class DataConfig:
    name: str
    dir: str | None
    limit: int | None
    batch_size: int
    eval_batch_size: int
    workers: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    val_fraction: float
    eval_limit: int | None
    skip_bad_files: bool


@dataclass(frozen=True)
class OptimizerConfig:
    name: str
    momentum: float
    nesterov: bool
    weight_decay: float
    betas: tuple[float, float]
    lr: float | None = None  # the float stage's optimizer takes ``float_lr``


@dataclass(frozen=True)
class QuantizerOptimConfig:
    weight_lr: float | None  # None: the network's lr
    input_lr: float | None
    weight_decay: float


@dataclass(frozen=True)
class ScheduleConfig:
    name: str
    warmup_epochs: float
    warmup_lr: float | None
    milestones: tuple[float, ...]
    gamma: float

    @classmethod
    def of(cls, schedule: ScheduleConfig | Mapping[str, Any]) -> ScheduleConfig:
        if isinstance(schedule, ScheduleConfig):
            return schedule
        values = {"warmup_lr": None, **schedule}
        return cls(**{**values, "milestones": tuple(values["milestones"])})


@dataclass(frozen=True)
class RunConfig:
    """One run's settings (``DEFAULTS`` documents each)."""

    paper: Any
    seed: int
    device: str
    out: str
    model: ModelConfig
    data: DataConfig
    method: str
    bits: int | None
    first_last_bits: int | None
    float_downsample: bool
    quantize_inputs: bool  # False: weights only
    overrides: Mapping[str, Any]
    weight_options: Mapping[str, Any]
    input_options: Mapping[str, Any]
    init: str | None
    float_epochs: int
    float_lr: float
    float_optimizer: OptimizerConfig
    epochs: int
    max_steps: int | None
    calibrate_batches: int
    optimizer: OptimizerConfig
    quantizer_optim: QuantizerOptimConfig
    schedule: ScheduleConfig
    label_smoothing: float
    progress_seconds: float
    dynamics_every: int | None  # None: about dynamics.DYNAMICS_SAMPLES samples a stage; 0: off
    amp: str | None
    channels_last: bool
    compile: bool
    adaptive: AdaptiveSettings | None  # None: one bit-width
    source: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> RunConfig:
        """From a complete mapping (``resolve_config``'s result), checking every value."""
        check_values(values)
        data, model = values["data"], values["model"]
        return cls(
            **{key: values[key] for key in SCALARS},
            model=ModelConfig(model["name"], _frozen(model["options"] or {})),
            data=DataConfig(**{
                **data,
                "mean": None if data["mean"] is None else tuple(data["mean"]),
                "std": None if data["std"] is None else tuple(data["std"]),
            }),
            overrides=_frozen(values["overrides"] or {}),
            weight_options=_frozen(values["weight_options"] or {}),
            input_options=_frozen(values["input_options"] or {}),
            float_optimizer=_optimizer(values["float_optimizer"]),
            optimizer=_optimizer(values["optimizer"]),
            quantizer_optim=QuantizerOptimConfig(**values["quantizer_optim"]),
            schedule=ScheduleConfig.of(values["schedule"]),
            adaptive=adaptive_settings(values),
            source=_frozen(copy.deepcopy(dict(values))),
        )

    @classmethod
    def stored(cls, values: Mapping[str, Any], *changes: Mapping[str, Any]) -> RunConfig:
        """A stored config, completed for the keys it predates, with ``changes`` over it."""
        return cls.parse(load_run_config(values, *changes))

    @classmethod
    def of(cls, config: RunConfig | Mapping[str, Any]) -> RunConfig:
        """``config`` itself, or the complete mapping it is parsed from."""
        return config if isinstance(config, RunConfig) else cls.parse(config)

    def to_dict(self) -> dict[str, Any]:
        """The mapping this was parsed from (for ``config.yaml`` and checkpoints)."""
        return _thawed(self.source)

    @property
    def bits_label(self) -> str:
        """``"4"``, or ``"8/6/4/2"`` for a network trained at several bit-widths."""
        if self.adaptive is None:
            return str(self.bits)
        return "/".join(map(str, self.adaptive.bits))


# Top-level keys that are plain values.
SCALARS = (
    "paper", "seed", "device", "out", "method", "bits", "first_last_bits", "float_downsample",
    "quantize_inputs",
    "init", "float_epochs", "float_lr", "epochs", "max_steps", "calibrate_batches",
    "label_smoothing", "progress_seconds", "dynamics_every", "amp", "channels_last", "compile",
)


def _optimizer(values: Mapping[str, Any]) -> OptimizerConfig:
    return OptimizerConfig(**{**values, "betas": tuple(values["betas"])})


def _thawed(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _thawed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_thawed(item) for item in value]
    return value
