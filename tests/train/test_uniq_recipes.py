"""The packaged UniQ and LSQ recipes: UniQ Tables 2, 4, 5 and 6, row by row, with §5's settings."""

import pathlib

import pytest
from torch import nn

from lowbit.models import build_model
from lowbit.train.build import quantize_from_config
from lowbit.train.checks import check_config
from lowbit.train.config import DEFAULTS, resolve_config
from lowbit.train.recipes import find_recipe, packaged, read_yaml
from lowbit.train.sweep import load_spec, row_configs

RECIPES = sorted(name for name in packaged() if name.startswith(("uniq-", "lsq-")))
CIFAR = "preactresnet32-cifar100"

# Top-1 (%) as printed: Table 4 (UniQ / LSQ, FP 71.4), Table 5 (step size init: fixed 0.1,
# fixed 0.2, LSQ's heuristic), Table 6 (1-bit optimizer and warm-up), Table 2 (ImageNet).
PAPER_TOP1 = {
    f"uniq-{CIFAR}-float": 71.4,
    **{f"uniq-{CIFAR}-{b}bit": t for b, t in ((4, 71.6), (3, 71.4), (2, 69.3), (1, 62.4))},
    **{f"lsq-{CIFAR}-{b}bit": t for b, t in ((4, 71.4), (3, 70.9), (2, 68.5))},
    **{f"uniq-{CIFAR}-2bit-init-{k}": t for k, t in (("0p1", 67.1), ("0p2", 68.6), ("lsq", 68.3))},
    **{f"uniq-{CIFAR}-3bit-init-{k}": t for k, t in (("0p1", 70.7), ("0p2", 70.9), ("lsq", 71.0))},
    **{f"uniq-{CIFAR}-1bit-{k}": t for k, t in (
        ("sgd-lr1e-2", 57.0), ("sgd-lr5e-3", 59.1), ("sgd-lr1e-3", 59.5),
        ("sgd-warmup5", 61.3), ("sgd-warmup10", 61.1),
        ("adam-lr4e-3", 60.9), ("adam-lr1e-3", 59.9), ("adam-lr5e-4", 61.0),
        ("adam-warmup10", 62.1),
    )},
    **{f"uniq-{model}-imagenet-{b}bit": t for model, row in (
        ("preactresnet18", (71.5, 70.5, 67.8, 60.5)),
        ("preactresnet34", (75.0, 74.2, 72.1, 65.8)),
        # Post-activation variants (torchvision's ResNets) carry the same rows' numbers.
        ("resnet18", (71.5, 70.5, 67.8, 60.5)),
        ("resnet34", (75.0, 74.2, 72.1, 65.8)),
        ("mobilenetv2", (68.2, 65.0, 50.5, 23.2)),
    ) for b, t in zip((4, 3, 2, 1), row)},
}
# Table 6 columns: (optimizer, lr after warm-up, warm-up epochs at lr 0.001).
TABLE6 = {
    "sgd-lr1e-2": ("sgd", 0.01, 0), "sgd-lr5e-3": ("sgd", 0.005, 0),
    "sgd-lr1e-3": ("sgd", 0.001, 0),
    "sgd-warmup5": ("sgd", 0.01, 5), "sgd-warmup10": ("sgd", 0.01, 10),
    "adam-lr4e-3": ("adam", 0.004, 0), "adam-lr1e-3": ("adam", 0.001, 0),
    "adam-lr5e-4": ("adam", 0.0005, 0), "adam-warmup10": ("adam", 0.004, 10),
}
IMAGENET_WEIGHT_DECAY = {4: 1e-4, 3: 0.5e-4, 2: 0.25e-4, 1: 0.0}  # §5.1


def config_of(name):
    return resolve_config(find_recipe(name))


def test_every_table_row_has_a_recipe_with_the_papers_number():
    assert set(RECIPES) == set(PAPER_TOP1)
    for name, top1 in PAPER_TOP1.items():
        paper = config_of(name)["paper"]
        assert paper["top1"] == top1, name
        assert paper["source"].startswith("UniQ") and paper["row"]
        assert paper["table"] in ("Table 2", "Table 4", "Table 5", "Table 6")


def layer_quantizers(name, config):
    """The first, last and downsampling layers of the recipe's model after quantization."""
    classes = 100 if config["data"]["name"] == "cifar100" else 1000
    model = build_model(config["model"]["name"], num_classes=classes)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    downsample = [n for n in names if n.endswith("downsample.0")]
    quantize_from_config(model, config)
    layers = [model.get_submodule(n) for n in names]
    return layers, [model.get_submodule(n) for n in downsample]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_valid_and_follows_section_5(name):
    """§5.1: first/last layers at 8 bits for multi-bit, float (with downsampling) for binary;
    no weight decay on step sizes; K = 100 (CIFAR) / 1000 (ImageNet) calibration batches."""
    assert set(read_yaml(find_recipe(name))) <= set(DEFAULTS)
    config = config_of(name)
    check_config(config)
    assert config["data"]["name"] in name
    if not config["epochs"]:
        assert name.endswith("-float") and config["float_epochs"] == 350
        return
    assert f"-{config['bits']}bit" in name and config["float_epochs"] == 0
    assert config["method"] == name.split("-")[0]
    assert config["quantizer_optim"]["weight_decay"] == 0.0
    imagenet = config["data"]["name"] == "imagenet"
    assert config["calibrate_batches"] == (1000 if imagenet else 100)
    assert config["epochs"] == (90 if imagenet else 350)
    assert config["schedule"]["name"] == "cosine"
    layers, downsample = layer_quantizers(name, config)
    inner = layers[1].weight_quantizer
    assert inner.bits == config["bits"]
    if config["bits"] == 1:
        assert not hasattr(layers[0], "weight_quantizer")
        assert not hasattr(layers[-1], "weight_quantizer")
        if config["model"]["name"] != "mobilenetv2":  # it has no strided 1x1 convolutions
            assert downsample and not any(hasattr(d, "weight_quantizer") for d in downsample)
    else:
        assert layers[0].weight_quantizer.bits == layers[-1].weight_quantizer.bits == 8
        assert layers[-1].input_quantizer.bits == 8
        assert config["optimizer"]["name"] == "sgd" and config["optimizer"]["lr"] == 0.01
    # Kernel-wise weights only for the ImageNet ResNets (§5.1, §5.2).
    kernel_wise = imagenet and config["model"]["name"].startswith(("resnet", "preact_resnet"))
    if config["method"] == "uniq":
        assert inner.per_channel == kernel_wise
    if imagenet:
        assert config["optimizer"]["weight_decay"] == IMAGENET_WEIGHT_DECAY[config["bits"]]
    else:
        assert config["optimizer"]["weight_decay"] == 5e-4  # §5.2, every CIFAR-100 run


def test_binary_recipes_match_table6_columns():
    """Warm-up holds lr at 0.001, then 0.01 (SGD) or 0.004 (Adam); the main 1-bit recipe is
    Adam with 5 warm-up epochs, as on ImageNet."""
    for suffix, (optimizer, lr, warmup) in {"": ("adam", 0.004, 5), **TABLE6}.items():
        config = config_of(f"uniq-{CIFAR}-1bit" + (f"-{suffix}" if suffix else ""))
        assert (config["optimizer"]["name"], config["optimizer"]["lr"]) == (optimizer, lr)
        assert config["schedule"]["warmup_epochs"] == warmup
        assert config["schedule"]["warmup_lr"] == (0.001 if warmup else None)
    for model in ("preactresnet18", "preactresnet34", "resnet18", "resnet34", "mobilenetv2"):
        schedule = config_of(f"uniq-{model}-imagenet-1bit")["schedule"]
        assert (schedule["warmup_epochs"], schedule["warmup_lr"]) == (5, 0.001)


def test_init_ablation_changes_only_the_step_size_init():
    """Table 5: the same run as the main recipe, every step size started at 0.1, 0.2 or LSQ's
    2E|X|/sqrt(Q_P)."""
    for bits in (2, 3):
        main = config_of(f"uniq-{CIFAR}-{bits}bit")
        for suffix, init in (("0p1", 0.1), ("0p2", 0.2), ("lsq", "lsq")):
            config = config_of(f"uniq-{CIFAR}-{bits}bit-init-{suffix}")
            assert config["weight_options"]["init"] == config["input_options"]["init"] == init
            differ = {k for k in config if config[k] != main[k]}
            assert differ == {"paper", "weight_options", "input_options"}


def test_table4_sweep_starts_multibit_from_float_and_binary_from_2bit(tmp_path):
    rows = {row.name: row for row in load_spec("sweep-uniq-table4-preactresnet32")}
    configs = row_configs(list(rows.values()), [], tmp_path)
    assert set(rows) == {n for n in PAPER_TOP1 if n.count("-") == 3 and CIFAR in n}
    for name, row in rows.items():
        bits = configs[name].bits if configs[name].epochs else None
        expected = {None: None, 1: f"uniq-{CIFAR}-2bit"}.get(bits, f"uniq-{CIFAR}-float")
        assert row.init == expected, name
        if expected:
            assert pathlib.Path(configs[name].init).parent == tmp_path / expected


@pytest.mark.parametrize("depth", [18, 34])
def test_imagenet_resnets_are_the_papers_preactivation_ones(depth):
    """§5.1: "For ResNets, we use the pre-activation version", from PytorchCV's float models;
    the post-activation rows are variants of them on torchvision's ResNets."""
    for bits in (4, 3, 2, 1):
        paper_row = config_of(f"uniq-preactresnet{depth}-imagenet-{bits}bit")
        variant = config_of(f"uniq-resnet{depth}-imagenet-{bits}bit")
        assert paper_row["model"]["name"] == f"preact_resnet{depth}"
        assert variant["model"]["name"] == f"resnet{depth}"
        multibit = {"model": None, "init": None}
        assert {**paper_row, **multibit} == {**variant, **multibit}
        assert paper_row["init"] == (f"preact_resnet{depth}-pytorchcv.pt" if bits > 1 else None)
        assert variant["init"] == (f"resnet{depth}-torchvision.pt" if bits > 1 else None)

