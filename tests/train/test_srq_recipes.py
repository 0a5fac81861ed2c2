"""The packaged RQ / SRQ / SRQ + DropBits recipes: the SRQ paper's Tables 1-3, 6 (App. E) and
App. F."""

import pytest
from torch import nn

from lowbit.models import build_model
from lowbit.train.build import quantize_from_config
from lowbit.train.checks import check_config
from lowbit.train.config import DEFAULTS, resolve_config
from lowbit.train.optim import lr_factor
from lowbit.train.recipes import find_recipe, packaged, read_yaml
from lowbit.train.sweep import load_spec

RECIPES = sorted(name for name in packaged() if name.startswith(("rq-", "srq-")))

# Test error (%) as printed. Table 1: (RQ, RQ + Ann., SRQ, SRQ + DropBits); None = "-".
TABLE1 = {
    "lenet5-mnist": {4: (0.58, 0.62, 0.59, 0.53), 3: (0.69, 0.74, 0.67, 0.58),
                     2: (0.76, None, 0.72, 0.63)},
    "vgg7-cifar10": {4: (8.43, 8.47, 7.15, 6.85), 3: (9.56, 10.78, 7.08, 6.94),
                     2: (11.75, None, 7.68, 7.51)},
}
PREFIXES = ("rq", "rq-anneal", "srq", "srq-dropbits")
TABLE2 = {"resnet18-imagenet-4bit": 30.37, "resnet18-imagenet-3bit": 32.79,
          "mobilenetv2-imagenet-4bit": 30.83, "mobilenetv2-imagenet-3bit": 36.96}
# Table 3, "Test Error (Reg.)" and the learned weight bits per layer.
TABLE3 = {
    "lenet5-mnist-4bit": (0.52, "4/4/3/4"), "lenet5-mnist-3bit": (0.55, "3/2/3/3"),
    "lenet5-mnist-2bit": (0.59, "2/2/2/T"),
    "vgg7-cifar10-4bit": (6.65, "4/4/4/4/4/3/3/4"), "vgg7-cifar10-3bit": (6.77, "3/3/3/3/3/2/3/3"),
    "vgg7-cifar10-2bit": (7.36, "2/2/2/2/2/2/2/T"),
    "resnet18-imagenet-4bit": (34.30, "4/3/3/3/3/3/3/3/3/3/3/3/3/3/3/4/4/3/4/4/4"),
    "resnet18-imagenet-3bit": (40.30, "3/3/2/3/2/3/3/3/3/3/3/3/2/3/3/3/3/3/3/3/3"),
}
# Table 3's other columns: "Test Error" (uniform bits, Table 3's settings) and "Test Error
# (Fixed)" (the learned weight bits, fixed from the start).
TABLE3_UNIFORM = {"lenet5-mnist-4bit": 0.53, "lenet5-mnist-3bit": 0.58, "lenet5-mnist-2bit": 0.63,
                  "vgg7-cifar10-4bit": 6.77, "vgg7-cifar10-3bit": 6.82, "vgg7-cifar10-2bit": 7.49,
                  "resnet18-imagenet-4bit": 33.20, "resnet18-imagenet-3bit": 37.80}
TABLE3_FIXED = {"lenet5-mnist-4bit": 0.55, "lenet5-mnist-3bit": 0.65, "lenet5-mnist-2bit": 0.68,
                "vgg7-cifar10-4bit": 6.74, "vgg7-cifar10-3bit": 6.81, "vgg7-cifar10-2bit": 7.43,
                "resnet18-imagenet-4bit": 34.58, "resnet18-imagenet-3bit": 41.01}
# App. E, Table 6: "Gumbel-Softmax + multi-class STE".
TABLE6 = {"lenet5-mnist-4bit": 0.57, "lenet5-mnist-3bit": 0.65, "lenet5-mnist-2bit": 0.74,
          "vgg7-cifar10-4bit": 8.25, "vgg7-cifar10-3bit": 8.44, "vgg7-cifar10-2bit": 10.41}
EXPECTED = {
    **{f"srq-dropbits-{row}-uniform": error for row, error in TABLE3_UNIFORM.items()},
    **{f"srq-dropbits-{row}-fixed": error for row, error in TABLE3_FIXED.items()},
    **{f"srq-gumbel-{row}": error for row, error in TABLE6.items()},
    **{f"{prefix}-{family}-{bits}bit": error
       for family, rows in TABLE1.items() for bits, errors in rows.items()
       for prefix, error in zip(PREFIXES, errors) if error is not None},
    **{f"srq-dropbits-{row}": error for row, error in TABLE2.items()},
    **{f"srq-dropbits-{row}-learned": error for row, (error, _) in TABLE3.items()},
}
CLASSES = {"mnist": 10, "cifar10": 10, "imagenet": 1000}


def config_of(name):
    return resolve_config(find_recipe(name))


def test_every_table_row_has_a_recipe_with_the_papers_error():
    """The paper prints test error; the recipes carry it and top-1 = 100 - error."""
    assert set(RECIPES) == set(EXPECTED)
    for name, error in EXPECTED.items():
        paper = config_of(name)["paper"]
        assert paper["top1_error"] == error, name
        assert paper["top1"] == pytest.approx(100 - error, abs=1e-9)
        assert paper["table"] in ("Table 1", "Table 2", "Table 3", "Table 6 (App. E)")
        assert paper["row"]
    for row, (_, bits) in TABLE3.items():
        assert config_of(f"srq-dropbits-{row}-learned")["paper"]["learned_bits"] == bits
        assert config_of(f"srq-dropbits-{row}-fixed")["paper"]["weight_bits"] == bits


def method_of(name):
    return "rq" if name.startswith("rq-") else (
        "srq-dropbits" if name.startswith("srq-dropbits-") else "srq")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_quantizes_every_layer_at_its_bits(name):
    """§4: weights and activations of all layers, the first and last included."""
    assert set(read_yaml(find_recipe(name))) <= set(DEFAULTS)
    config = config_of(name)
    check_config(config)
    assert config["method"] == method_of(name) and f"-{config['bits']}bit" in name
    assert config["first_last_bits"] == config["bits"] and config["float_epochs"] == 0
    model = build_model(config["model"]["name"], num_classes=CLASSES[config["data"]["name"]])
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    quantize_from_config(model, config)
    layers = [model.get_submodule(n) for n in names]
    # Table 3 "Fixed": each layer's weight bits in the paper's per-layer string ("T" ternary),
    # activations at the initial bits; every other row: all at the row's bits.
    per_layer = config["paper"].get("weight_bits", "/".join([str(config["bits"])] * len(names)))
    assert "/".join(weight_bits_label(layer.weight_quantizer) for layer in layers) == per_layer
    assert all(layer.input_quantizer.bits == config["bits"] for layer in layers[1:])
    weights = layers[0].weight_quantizer
    assert getattr(weights, "anneal", False) == name.startswith("rq-anneal-")
    assert getattr(weights, "sampling", "mode") == (
        "gumbel" if name.startswith("srq-gumbel-") else "mode")
    masks = getattr(weights, "masks", None)
    assert (masks is not None) == name.startswith("srq-dropbits-")
    if masks is not None:
        assert masks.design == "bitwise"
        assert (masks.l0_lambda > 0) == name.endswith("-learned")


def test_small_data_schedules_follow_appendix_f():
    """LeNet-5: lr 5e-4, x0.8 per epoch over the last 50 of 100 epochs; VGG-7: lr 1e-4, x0.1 at
    epoch 150 (0.9^22 = 0.098 with one gamma), x0.9 per epoch over the last 50 of 300."""
    for prefix in PREFIXES:
        mnist = config_of(f"{prefix}-lenet5-mnist-3bit")
        assert mnist["optimizer"]["lr"] == 5e-4 and mnist["epochs"] == 100
        assert mnist["data"]["mean"] == mnist["data"]["std"] == [0.5]  # inputs in [-1, 1]
        factor = [lr_factor(10 * epoch, 10, 100, mnist["schedule"]) for epoch in (50, 51, 99)]
        assert factor == pytest.approx([1.0, 0.8, 0.8**49])
        cifar = config_of(f"{prefix}-vgg7-cifar10-3bit")
        assert cifar["optimizer"]["lr"] == 1e-4 and cifar["epochs"] == 300
        epochs = (149, 150, 250, 299)
        factor = [lr_factor(10 * epoch, 10, 300, cifar["schedule"]) for epoch in epochs]
        assert factor == pytest.approx([1.0, 0.1, 0.1, 0.1 * 0.9**49], rel=0.02)


def weight_bits_label(quantizer):
    return "T" if getattr(quantizer, "ternary", False) else str(quantizer.bits)


def test_every_table3_column_uses_adamw_and_the_same_training():
    """App. F: "All experiments in Table 3 and 5 were conducted by the use of AdamW" (weight
    decay 0.02 for VGG-7, 0.01 otherwise); the uniform and fixed columns train as the learned
    one (ImageNet: ten epochs from the float model), without the L0 regularizer."""
    for row in TABLE3:
        learned = config_of(f"srq-dropbits-{row}-learned")
        for column in ("uniform", "fixed"):
            config = config_of(f"srq-dropbits-{row}-{column}")
            assert config["optimizer"] == learned["optimizer"]
            assert (config["epochs"], config["schedule"], config["data"], config["init"]) == (
                learned["epochs"], learned["schedule"], learned["data"], learned["init"])
            assert config["weight_options"] == {"masks": "bitwise"}


def test_learned_bit_widths_use_adamw_and_the_papers_lambda_range():
    """App. F: AdamW with weight decay 0.01 (LeNet-5, ResNet-18) or 0.02 (VGG-7); lambda in
    [5e-5, 1e-2]; the regularizer on for 50% of training, 9 of 10 epochs on ImageNet."""
    for row in TABLE3:
        config = config_of(f"srq-dropbits-{row}-learned")
        optimizer, options = config["optimizer"], config["weight_options"]
        assert optimizer["name"] == "adamw"
        assert optimizer["weight_decay"] == (0.02 if row.startswith("vgg7") else 0.01)
        assert 5e-5 <= options["l0_lambda"] <= 1e-2
        imagenet = "imagenet" in row
        assert options["l0_fraction"] == (0.9 if imagenet else 0.5)
        assert config["epochs"] == (10 if imagenet else config_of(
            f"srq-dropbits-{row}")["epochs"])


def test_imagenet_recipes_follow_appendix_f():
    """(epochs, batch, lr, milestones, gamma) per network and bit-width; AdamW, decay 0.01."""
    settings = {
        "resnet18-imagenet-3bit": (80, 256, 2e-5, [50, 60, 68], 0.5),
        "resnet18-imagenet-4bit": (150, 128, 5e-6, [125], 0.2),
        "mobilenetv2-imagenet-3bit": (25, 48, 2e-5, [15, 20], 0.5),
        "mobilenetv2-imagenet-4bit": (25, 48, 2e-5, [10, 12, 18, 20], 0.5),
    }
    for row, (epochs, batch, lr, milestones, gamma) in settings.items():
        config = config_of(f"srq-dropbits-{row}")
        assert (config["epochs"], config["data"]["batch_size"]) == (epochs, batch)
        assert config["optimizer"] == {**config["optimizer"], "name": "adamw", "lr": lr,
                                       "weight_decay": 0.01}
        assert (config["schedule"]["milestones"], config["schedule"]["gamma"]) == (
            milestones, gamma)
        assert config["init"] == f"{row.split('-')[0]}-torchvision.pt"


@pytest.mark.parametrize("family", ["lenet5", "vgg7"])
def test_table1_sweep_has_every_cell(family):
    rows = load_spec(f"sweep-srq-table1-{family}")
    expected = {name for name in EXPECTED if f"-{family}-" in name and "imagenet" not in name
                and not name.endswith(("-learned", "-uniform", "-fixed"))
                and not name.startswith("srq-gumbel-")}
    assert {row.name for row in rows} == expected and all(row.init is None for row in rows)


@pytest.mark.parametrize("family", ["lenet5", "vgg7"])
def test_table3_sweep_has_every_column(family):
    rows = load_spec(f"sweep-srq-table3-{family}")
    expected = {name for name in EXPECTED if f"-{family}-" in name
                and name.endswith(("-learned", "-uniform", "-fixed"))}
    assert {row.name for row in rows} == expected and all(row.init is None for row in rows)

