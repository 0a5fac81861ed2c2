"""Config resolution, method presets and lr schedules."""

import math
from dataclasses import FrozenInstanceError, fields

import pytest

from lowbit import LowbitError
from lowbit.train.config import DEFAULTS, resolve_config
from lowbit.train.optim import lr_factor
from lowbit.train.run_config import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    QuantizerOptimConfig,
    RunConfig,
    ScheduleConfig,
)


def test_overrides_parse_yaml_values_and_nest():
    config = resolve_config(None, ["data.limit=2000", "bits=3", "overrides={fc: null}"])
    assert config["data"]["limit"] == 2000 and config["bits"] == 3
    assert config["overrides"] == {"fc": None}
    assert DEFAULTS["bits"] == 4  # defaults are never mutated


def test_free_form_sections_accumulate():
    config = resolve_config(None, ["model.options.width=16", "model.options.depth=2"])
    assert config["model"]["options"] == {"width": 16, "depth": 2}


@pytest.mark.parametrize("text", ["epoch=3", "optimizer.lrr=0.1", "novalue"])
def test_typos_are_errors(text):
    with pytest.raises(LowbitError):
        resolve_config(None, [text])


def test_uniq_1bit_preset_sits_below_recipe_and_overrides(tmp_path):
    """UniQ §5: Adam, constant warm-up at 0.001 for 5 epochs then 0.004 (Table 6)."""
    config = resolve_config(None, ["method=uniq", "bits=1"])
    assert config["optimizer"]["name"] == "adam" and config["optimizer"]["lr"] == 0.004
    assert config["schedule"]["warmup_epochs"] == 5 and config["schedule"]["warmup_lr"] == 0.001
    assert config["first_last_bits"] is None and config["float_downsample"] is True
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: uniq\nbits: 1\noptimizer: {lr: 0.002}\n")
    config = resolve_config(recipe, ["optimizer.name=sgd"])
    assert config["optimizer"] == {**config["optimizer"], "name": "sgd", "lr": 0.002}
    assert resolve_config(None, ["method=uniq", "bits=2"])["optimizer"]["name"] == "sgd"


def test_constant_warmup_then_cosine():
    schedule = {
        "name": "cosine",
        "warmup_epochs": 5,
        "warmup_lr": 0.001,
        "milestones": [],
        "gamma": 0.1,
    }
    factors = [lr_factor(step, 10, 15, schedule, base_lr=0.004) for step in range(150)]
    assert all(f == pytest.approx(0.25) for f in factors[:50])  # 0.001 / 0.004
    assert factors[50] == pytest.approx(1.0)
    assert factors[100] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_linear_warmup_and_multistep():
    schedule = {
        "name": "multistep",
        "warmup_epochs": 1,
        "warmup_lr": None,
        "milestones": [2, 3],
        "gamma": 0.1,
    }
    assert lr_factor(0, 4, 5, schedule) == pytest.approx(0.25)
    assert lr_factor(5, 4, 5, schedule) == 1.0
    assert lr_factor(8, 4, 5, schedule) == pytest.approx(0.1)
    assert lr_factor(12, 4, 5, schedule) == pytest.approx(0.01)


def test_unknown_schedule_is_an_error():
    with pytest.raises(LowbitError, match="unknown schedule"):
        lr_factor(0, 1, 1, {**DEFAULTS["schedule"], "name": "step"})


def test_relaxed_methods_default_to_adam_at_every_bit_width():
    """SRQ App. F trains with Adam at lr 5e-4."""
    for method in ("rq", "srq", "srq-dropbits"):
        for bits in (2, 4):
            config = resolve_config(None, [f"method={method}", f"bits={bits}"])
            assert config["optimizer"]["name"] == "adam"
            assert config["optimizer"]["lr"] == 0.0005


def test_uniq_and_lsq_step_sizes_get_no_weight_decay():
    """Issue 12 item 8: UniQ §5.1 trains step sizes without weight decay (its authors' code
    runs LSQ the same way); APoT keeps its alpha decay of 1e-4 (APoT §C.2)."""
    for method in ("uniq", "lsq"):
        for bits in (2, 4):
            config = resolve_config(None, [f"method={method}", f"bits={bits}"])
            assert config["quantizer_optim"]["weight_decay"] == 0.0
    assert resolve_config(None, ["method=apot"])["quantizer_optim"]["weight_decay"] == 1e-4


def test_run_config_has_a_typed_field_for_every_default():
    """RunConfig mirrors DEFAULTS key for key, so a new setting cannot be left untyped."""

    def names(cls):
        return {f.name for f in fields(cls)}

    assert names(RunConfig) - {"source"} == set(DEFAULTS)
    assert names(ModelConfig) == set(DEFAULTS["model"])
    assert names(DataConfig) == set(DEFAULTS["data"])
    assert names(OptimizerConfig) == set(DEFAULTS["optimizer"])
    assert names(OptimizerConfig) - {"lr"} == set(DEFAULTS["float_optimizer"])
    assert names(QuantizerOptimConfig) == set(DEFAULTS["quantizer_optim"])
    assert names(ScheduleConfig) == set(DEFAULTS["schedule"])
    config = RunConfig.parse(DEFAULTS)
    assert config.to_dict() == DEFAULTS and config.optimizer.betas == (0.9, 0.999)
    with pytest.raises(FrozenInstanceError):
        config.epochs = 3


def test_a_stored_config_gets_the_keys_it_predates():
    """A config.yaml written before validation splits existed trained on every image."""
    old = {key: value for key, value in DEFAULTS.items() if key not in ("amp", "max_steps")}
    old["data"] = {k: v for k, v in DEFAULTS["data"].items() if k != "val_fraction"}
    config = RunConfig.stored(old)
    assert config.data.val_fraction == 0 and config.amp is None and config.max_steps is None
    assert RunConfig.stored(DEFAULTS).data.val_fraction == DEFAULTS["data"]["val_fraction"]
