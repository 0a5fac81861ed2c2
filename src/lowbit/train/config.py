"""Run configuration: plain nested values, a YAML recipe on top, ``--set key=value`` last.

A recipe only sets values that ``DEFAULTS`` already has, so a typo is an error, not a silently
ignored key. The resolved mapping is parsed once into ``run_config.RunConfig`` (typed, frozen)
and written into every run directory.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from functools import reduce
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lowbit.errors import LowbitError, is_number
from lowbit.train.recipes import find_recipe, read_yaml

# The embedded default run: digits, small CNN, float pre-training then APoT 4-bit fine-tuning.
DEFAULTS: dict[str, Any] = {
    "paper": None,  # what a recipe reproduces: table, row and the paper's number
    "seed": 0,
    "device": "auto",
    "out": "runs",
    "model": {"name": "small_cnn", "options": {}},
    "data": {
        "name": "digits",
        "dir": None,
        "limit": None,
        "batch_size": 64,
        "eval_batch_size": 512,
        "workers": 4,
        "mean": None,  # per-channel input normalization; None = the data set's own
        "std": None,
        # Training images held out (seeded) to choose best.pt; the test split only reports.
        "val_fraction": 0.1,
        "eval_limit": None,  # evaluate the first N validation and test images (short runs)
        "skip_bad_files": False,  # skip unreadable images (counted in the summary)
    },
    "method": "apot",
    "bits": 4,
    "first_last_bits": 8,
    "float_downsample": False,  # keep strided 1x1 convs (residual downsampling) float
    "quantize_inputs": True,  # false: weights only, layer inputs float (APoT App. B Table 4)
    "overrides": {},
    "weight_options": {},
    "input_options": {},
    "init": None,  # checkpoint to start from (progressive initialization)
    "float_epochs": 15,  # float training before quantization; 0 = start quantized
    "float_lr": 0.1,
    "float_optimizer": {  # the float stage's optimizer (its lr is float_lr)
        "name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
        "betas": [0.9, 0.999],
    },
    "epochs": 15,
    "max_steps": None,  # training steps per stage at most (short runs); the schedule fits
    "calibrate_batches": 0,
    "optimizer": {
        "name": "sgd",
        "lr": 0.04,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 5e-4,
        "betas": [0.9, 0.999],
    },
    # Quantizer parameters (alpha, step sizes) get their own lr and weight decay (APoT §C.2).
    "quantizer_optim": {
        "weight_lr": None,
        "input_lr": None,
        "weight_decay": 1e-4,
    },
    # warmup_lr: the lr held during warm-up (UniQ's constant warm-up); None ramps up linearly.
    "schedule": {
        "name": "cosine", "warmup_epochs": 0, "warmup_lr": None, "milestones": [], "gamma": 0.1,
    },
    "label_smoothing": 0.0,
    "progress_seconds": 10,  # off a terminal: one progress line per this many seconds
    # Training dynamics (lowbit.train.dynamics): every quantizer's state sampled every this many
    # steps into metrics.jsonl (and TensorBoard); null = about 20 samples a stage, 0 = off.
    "dynamics_every": None,
    # Speed: amp "bf16" runs forward and loss under bf16 autocast (quantizers compute in
    # float32), null in float32; channels_last stores conv activations NHWC (GPUs); compile
    # trains a torch.compile'd model (single bit-width runs).
    "amp": None,
    "channels_last": False,
    "compile": False,
    # One network for several bit-widths (CoQuant, docs/coquant.md): bits null = one bit-width;
    # a list such as [8, 6, 4, 2] trains them jointly. teacher: dynamic | highest | next | none;
    # lambda and distance (weights | bits) weigh the dynamic teacher score; p1 is the probability
    # of keeping the first block at the student's bits (swap_schedule: linear | flat);
    # block_depth: dotted-name parts naming a block; bn_calibration_batches: zero-shot testing.
    "adaptive": {
        "bits": None, "teacher": "dynamic", "swap": True, "p1": 0.9, "lambda": 0.001,
        "distance": "weights", "swap_schedule": "linear", "block_depth": 2,
        "bn_calibration_batches": 20,
    },
}


# Mappings whose keys are the user's (layer patterns, quantizer or model options).
FREE_FORM = {"model.options", "overrides", "weight_options", "input_options"}


def merge(base: dict[str, Any], update: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """``base`` updated by ``update``, recursively; a key unknown to ``base`` is an error
    except inside the ``FREE_FORM`` mappings."""
    result = copy.deepcopy(base)
    strict = where.rstrip(".") not in FREE_FORM
    for key, value in update.items():
        path = f"{where}{key}"
        if strict and key not in result:
            known = ", ".join(sorted(base))
            raise LowbitError(f"unknown config key {path!r}; known keys here: {known}")
        if isinstance(result.get(key), dict) and isinstance(value, Mapping):
            result[key] = merge(result[key], value, f"{path}.")
        else:
            result[key] = copy.deepcopy(value)
    return result


# Numeric settings: (dotted key, whole number?, smallest allowed, bound included?, None allowed?).
NUMBERS = (
    ("seed", True, None, True, False),
    ("data.batch_size", True, 1, True, False),
    ("data.eval_batch_size", True, 1, True, False),
    ("data.workers", True, 0, True, False),
    ("data.limit", True, 1, True, True),
    ("data.val_fraction", False, 0, True, False),
    ("data.eval_limit", True, 1, True, True),
    ("max_steps", True, 1, True, True),
    ("progress_seconds", False, 0, False, False),
    ("dynamics_every", True, 0, True, True),
    ("float_epochs", True, 0, True, False),
    ("epochs", True, 0, True, False),
    ("calibrate_batches", True, 0, True, False),
    ("float_lr", False, 0, False, False),
    ("optimizer.lr", False, 0, False, False),
    ("optimizer.momentum", False, 0, True, False),
    ("optimizer.weight_decay", False, 0, True, False),
    ("float_optimizer.momentum", False, 0, True, False),
    ("float_optimizer.weight_decay", False, 0, True, False),
    ("quantizer_optim.weight_lr", False, 0, False, True),
    ("quantizer_optim.input_lr", False, 0, False, True),
    ("quantizer_optim.weight_decay", False, 0, True, False),
    ("schedule.warmup_epochs", False, 0, True, False),
    ("schedule.warmup_lr", False, 0, False, True),
    ("schedule.gamma", False, 0, False, False),
    ("label_smoothing", False, 0, True, False),
)


# Lists of numbers: (dotted key, length or None for any, smallest allowed, below this).
NUMBER_LISTS = (
    ("schedule.milestones", None, 0, math.inf),
    ("optimizer.betas", 2, 0, 1),
    ("float_optimizer.betas", 2, 0, 1),
)

# Settings that are true or false.
FLAGS = (
    "float_downsample", "quantize_inputs", "channels_last", "compile", "data.skip_bad_files",
    "optimizer.nesterov", "float_optimizer.nesterov",
)


def _value(config: Mapping[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value[part]
    return value


def check_values(config: Mapping[str, Any]) -> None:
    """Every numeric setting is a number of the right kind and range (``NUMBERS``) and every
    flag a boolean (``FLAGS``); a ``LowbitError`` names the first that is not."""
    for key in FLAGS:
        if not isinstance(_value(config, key), bool):
            raise LowbitError(f"{key} must be true or false, got {_value(config, key)!r}")
    for key, whole, lowest, inclusive, nullable in NUMBERS:
        value = _value(config, key)
        if value is None and nullable:
            continue
        kind = "a whole number" if whole else "a finite number"
        ok_type = isinstance(value, int) if whole else is_number(value)
        if isinstance(value, bool) or not ok_type or not math.isfinite(value):
            raise LowbitError(f"{key} must be {kind}, got {value!r}")
        if lowest is not None and not (value >= lowest if inclusive else value > lowest):
            bound = f">= {lowest}" if inclusive else f"> {lowest}"
            raise LowbitError(f"{key} must be {bound}, got {value!r}")
    for key, length, lowest, below in NUMBER_LISTS:
        values = _value(config, key)
        if not (
            isinstance(values, list) and (length is None or len(values) == length)
            and all(is_number(v) and lowest <= v < below for v in values)
        ):
            count = f"{length} " if length else ""
            raise LowbitError(
                f"{key} must be a list of {count}numbers in [{lowest}, {below}), got {values!r}"
            )
    if not _value(config, "data.val_fraction") < 1:
        raise LowbitError(
            f"data.val_fraction must be below 1, got {_value(config, 'data.val_fraction')!r}"
        )


# Settings added after runs were first written, at the values that reproduce those runs: an
# old config.yaml or checkpoint without the key meant this.
LEGACY: dict[str, Any] = {"data": {"val_fraction": 0.0}}


def load_run_config(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config (``config.yaml``, a checkpoint's ``config``), then ``layers`` over it,
    completed by ``DEFAULTS`` (``LEGACY`` for keys it predates)."""
    return reduce(merge, [LEGACY, *layers], DEFAULTS)


def parse_override(text: str) -> dict[str, Any]:
    """``"data.limit=2000"`` -> ``{"data": {"limit": 2000}}`` (values parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise LowbitError(f"--set takes KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as error:
        raise LowbitError(f"cannot parse the value in --set {text!r}: {error}") from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_recipe(recipe: str | Path) -> dict[str, Any]:
    """The config values of ``recipe``: a YAML file, or a packaged recipe's name, with its
    ``base`` chain merged in."""
    path = find_recipe(recipe)
    values = read_yaml(path)
    if isinstance(values, list):
        raise LowbitError(f"{str(path)!r} is a sweep spec, not a recipe; run it with lowbit sweep")
    if not isinstance(values, dict):
        raise LowbitError(f"recipe {str(path)!r} must be a mapping of config keys")
    return values


def method_preset(method: str, bits: Any) -> list[dict[str, Any]]:
    """The paper's training settings for ``method`` at ``bits`` (``presets.yaml``) as config
    layers: its ``any`` entry, then its entry for ``bits``; ``[]`` when it has neither."""
    with resources.files("lowbit.train").joinpath("presets.yaml").open() as f:
        presets = yaml.safe_load(f).get(method) or {}
    return [layer for layer in (presets.get("any"), presets.get(bits)) if layer]


def resolve_config(
    recipe: str | Path | None = None, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """DEFAULTS, the method's preset for its bits, the recipe, then each ``--set`` in order.

    ``recipe``: a YAML file or a packaged recipe's name."""
    layers = [load_recipe(recipe)] if recipe is not None else []
    layers += [parse_override(text) for text in overrides]
    # The recipe and --set choose the method and bits, which choose the preset beneath them.
    config = reduce(merge, layers, DEFAULTS)
    preset = method_preset(config["method"], config["bits"])
    if preset:
        return reduce(merge, [*preset, *layers], DEFAULTS)
    return config if layers else copy.deepcopy(DEFAULTS)  # never DEFAULTS itself
