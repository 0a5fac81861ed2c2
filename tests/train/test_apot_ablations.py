"""The APoT ablations: the recipes of Table 3 (ResNet-18 / ImageNet) and App. B Table 4
(ResNet-20 / CIFAR-10, weights only), and a short digits run of each option they use."""

from __future__ import annotations

import pytest
import torch

from lowbit.adaptive import make_adaptive
from lowbit.errors import LowbitError
from lowbit.models import build_model
from lowbit.train.build import quantize_from_config
from lowbit.train.checks import check_config
from lowbit.train.config import DEFAULTS, resolve_config
from lowbit.train.metrics import epoch_records, read_metrics
from lowbit.train.recipes import find_recipe, packaged, read_yaml
from lowbit.train.run import run_training

# APoT Table 3: (level set, bits, WN) -> top-1 with RCF, top-1 without (alpha = max|W|).
TABLE_3 = {
    ("apot", 5, True): (70.9, 70.0), ("pot", 5, True): (70.3, 68.9),
    ("uniform", 5, True): (70.7, 69.4), ("lloyd", 5, True): (70.9, 70.2),
    ("apot", 3, True): (69.9, 68.5), ("uniform", 3, True): (69.4, 67.8),
    ("lloyd", 3, True): (70.0, 69.0), ("apot", 3, False): (2.0, 68.5),
}
TABLE_3_RECIPES = {
    f"apot-resnet18-imagenet-table3-{method}-{bits}bit{'' if wn else '-nown'}{suffix}":
        (method, bits, wn, clipping, top1)
    for (method, bits, wn), tops in TABLE_3.items()
    for suffix, clipping, top1 in zip(("", "-norcf"), ("rcf", "max"), tops)
}
# App. B Table 4: WN x the weights' alpha lr; the seed text lost the table body (base file).
TABLE_4_RECIPES = {
    f"apot-resnet20-cifar10-table4-3bit-{'wn' if wn else 'nown'}-alr{tag}": (wn, lr)
    for wn in (True, False) for tag, lr in (("1e-3", 0.001), ("1e-2", 0.01), ("1e-1", 0.1))
}


def test_every_ablation_row_has_a_recipe():
    listed = {name for name in packaged() if "-table3-" in name or "-table4-" in name}
    apot = {name for name in listed if name.startswith("apot-")}
    assert apot == set(TABLE_3_RECIPES) | set(TABLE_4_RECIPES)


@pytest.mark.parametrize("name", sorted(TABLE_3_RECIPES))
def test_table3_recipe_sets_its_columns(name):
    method, bits, wn, clipping, top1 = TABLE_3_RECIPES[name]
    assert set(read_yaml(find_recipe(name))) <= set(DEFAULTS)
    config = resolve_config(find_recipe(name))
    check_config(config)
    assert config["paper"]["table"] == "Table 3" and config["paper"]["top1"] == top1
    assert (config["method"], config["bits"]) == (method, bits)
    assert config["model"]["name"] == "resnet18" and config["data"]["name"] == "imagenet"
    with torch.device("meta"):
        model = build_model("resnet18")
    quantize_from_config(model, config)
    weights = model.layer1[0].conv1.weight_quantizer
    assert (weights.level_set, weights.bits) == (method, bits)
    assert (weights.normalize, weights.clipping) == (wn, clipping)
    assert model.layer1[0].conv1.input_quantizer.clipping == "rcf"  # inputs keep RCF
    assert type(model.conv1.weight_quantizer).__name__ == "MaxScaleQuantizer"


@pytest.mark.parametrize("name", sorted(TABLE_4_RECIPES))
def test_table4_recipe_quantizes_weights_only(name):
    wn, lr = TABLE_4_RECIPES[name]
    config = resolve_config(find_recipe(name))
    check_config(config)
    assert config["paper"]["table"] == "App. B Table 4"
    assert config["bits"] == 3 and config["quantize_inputs"] is False
    assert config["quantizer_optim"]["weight_lr"] == lr and config["init"] is None
    model = build_model("resnet20", num_classes=10, shortcut="conv")
    quantize_from_config(model, config)
    layers = [m for m in model.modules() if hasattr(m, "input_quantizer")]
    assert layers and all(layer.input_quantizer is None for layer in layers)
    assert model.layer1[0].conv1.weight_quantizer.normalize is wn


def digits_run(tmp_path, *sets):
    """Two short epochs (4 steps each) on the embedded digits (a small CNN, float stage
    skipped)."""
    config = resolve_config(None, [
        f"out={tmp_path}", "float_epochs=0", "epochs=2", "data.limit=128", "data.batch_size=32",
        "data.eval_limit=64", "model.options.width=8", *sets,
    ])
    return run_training(config)


@pytest.mark.parametrize("sets", [
    ("method=lloyd", "bits=3", "calibrate_batches=1"),
    ("weight_options.clipping=pact", "input_options.clipping=pact"),
    ("weight_options.clipping=max",),
    ("weight_options.normalize=false", "bits=3"),
    ("quantize_inputs=false", "method=uniq", "bits=3"),
], ids=["lloyd", "pact-gradient", "no-clipping", "no-weight-norm", "weights-only"])
def test_each_ablation_option_trains_on_digits(tmp_path, sets):
    summary = digits_run(tmp_path, *sets)
    assert summary["status"] == "finished" and 0 <= summary["top1"] <= 100
    epochs = epoch_records(read_metrics(summary["run_dir"]))
    assert [line["epoch"] for line in epochs] == [1, 2]


def test_quantize_inputs_must_be_a_flag():
    with pytest.raises(LowbitError, match="quantize_inputs must be true or false"):
        check_config(resolve_config(None, ["quantize_inputs=maybe"]))


def test_unknown_clipping_is_one_error_line():
    config = resolve_config(None, ["weight_options.clipping=rcf2"])
    with pytest.raises(LowbitError, match="unknown clipping 'rcf2'; use one of: rcf, pact, max"):
        quantize_from_config(build_model("small_cnn", num_classes=10, in_channels=1), config)


@pytest.mark.parametrize("method", ["apot", "lsq", "srq", "pact"])
def test_weights_only_for_any_method_and_for_switchable_networks(method):
    """``quantize_inputs: false`` (App. B Table 4, "full precision for activations") leaves
    every layer input float whatever the method, a CoQuant-style switchable network too."""
    model = build_model("small_cnn", num_classes=10, in_channels=1, width=8)
    config = resolve_config(None, [f"method={method}", "bits=3", "quantize_inputs=false"])
    quantize_from_config(model, config)
    layers = [m for m in model.modules() if hasattr(m, "input_quantizer")]
    assert all(m.weight_quantizer is not None and m.input_quantizer is None for m in layers)
    if method == "pact":
        switchable = build_model("small_cnn", num_classes=10, in_channels=1, width=8)
        make_adaptive(switchable, [4, 2], method, quantize_inputs=False)
        layers = [m for m in switchable.modules() if hasattr(m, "input_quantizer")]
        assert layers and all(m.input_quantizer is None for m in layers)
