"""The packaged CoQuant recipes: the supplement's Table 2 hyperparameters and Table 4 numbers."""

import pytest

from lowbit.adaptive import SwitchableBatchNorm, model_bit_widths
from lowbit.models import build_model
from lowbit.train.build import quantize_from_config
from lowbit.train.checks import check_config
from lowbit.train.config import DEFAULTS, resolve_config
from lowbit.train.recipes import find_recipe, packaged, read_yaml

RECIPES = sorted(name for name in packaged()
                 if name.startswith("coquant-") and not name.startswith("coquant-ablation-"))
ABLATIONS = sorted(name for name in packaged() if name.startswith("coquant-ablation-"))
# The supplement's §4: Delta_B (%) of ResNet-18 on CIFAR-10 at lambda = 0, 0.001 and 1.
LAMBDA_DELTA_B = {"lambda0": (0.0, 98.3), "lambda1e-3": (0.001, 100.1), "lambda1": (1.0, 97.7)}
# The one adaptive setting each other ablation changes.
CHANGED = {
    "teacher-highest": {"teacher": "highest"}, "teacher-next": {"teacher": "next"},
    "teacher-none": {"teacher": "none", "swap": False}, "noswap": {"swap": False},
    "swap-flat": {"swap_schedule": "flat"},
}

# Supplement Table 4 (ResNet-18, CIFAR-10): top-1 at 8..2 bits for each trained set B.
TABLE4 = {
    "coquant-resnet18-cifar10-8642": [95.2, 95.2, 95.4, 95.3, 95.1, 94.6, 94.1],
    "coquant-resnet18-cifar10-82": [95.2, 95.2, 95.2, 95.2, 94.5, 94.7, 94.5],
    "coquant-resnet18-cifar10-84": [95.6, 95.5, 95.5, 95.3, 95.5, 93.8, 73.2],
}
# Supplement Table 2: (p1, lambda, alpha_init, alpha_lr, alpha_wd, batch, lr, milestones).
TABLE2 = {
    "resnet18-cifar10": (0.9, 0.001, 8.0, 0.1, 1e-4, 128, 0.1, [150, 225, 270]),
    "mobilenetv2-cifar10": (0.5, 0.001, 8.0, 0.01, 4e-5, 128, 0.01, [82, 122]),
    "resnet18-imagenet": (0.7, 0.001, 8.0, 0.1, 6e-5, 2880, 0.01, [30, 60, 85, 95]),
}


def test_table4_columns_have_recipes_with_the_papers_numbers():
    for name, column in TABLE4.items():
        paper = resolve_config(find_recipe(name))["paper"]
        assert [paper["top1_by_bits"][b] for b in range(8, 1, -1)] == column
        assert paper["top1"] == column[0] and paper["table"] == "Table 4"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_follows_table2_and_builds_a_switchable_model(name):
    raw = read_yaml(find_recipe(name))
    assert set(raw) <= set(DEFAULTS)
    config = resolve_config(find_recipe(name))
    check_config(config)
    assert config["paper"]["source"] and config["paper"]["row"]
    family = name[len("coquant-"):].rsplit("-", 1)[0]
    p1, lam, alpha, alpha_lr, alpha_wd, batch, lr, milestones = TABLE2[family]
    adaptive = config["adaptive"]
    assert (adaptive["p1"], adaptive["lambda"], adaptive["teacher"], adaptive["swap"]) == (
        p1, lam, "dynamic", True)
    assert config["input_options"]["alpha"] == alpha
    assert config["quantizer_optim"]["input_lr"] == alpha_lr
    assert config["quantizer_optim"]["weight_decay"] == alpha_wd
    processes = 8 if config["data"]["name"] == "imagenet" else 1
    assert config["data"]["batch_size"] * processes == batch
    assert config["optimizer"]["lr"] == lr and config["schedule"]["milestones"] == milestones
    classes = 1000 if config["data"]["name"] == "imagenet" else 10
    model = quantize_from_config(build_model(config["model"]["name"], num_classes=classes), config)
    assert model_bit_widths(model) == tuple(adaptive["bits"])
    assert any(isinstance(m, SwitchableBatchNorm) for m in model.modules())


def test_ablations_change_one_setting_of_the_table4_row():
    """Each ablation is coquant-resnet18-cifar10-8642 with one adaptive setting changed; the
    lambda rows carry the supplement's Delta_B; the -individual-* rows train one bit-width of
    B alone (Delta_B's denominators) with everything else the same."""
    row = resolve_config(find_recipe("coquant-resnet18-cifar10-8642"))
    suffixes = {name[len("coquant-ablation-resnet18-cifar10-"):] for name in ABLATIONS}
    individual = {f"individual-{b}bit" for b in (8, 6, 4, 2)}
    assert suffixes == {*LAMBDA_DELTA_B, *CHANGED, *individual}
    for suffix in suffixes:
        config = resolve_config(find_recipe(f"coquant-ablation-resnet18-cifar10-{suffix}"))
        check_config(config)
        changed = dict(CHANGED.get(suffix, {}))
        if suffix in LAMBDA_DELTA_B:
            changed["lambda"], delta_b = LAMBDA_DELTA_B[suffix]
            assert config["paper"]["delta_b"] == delta_b
        expected = {**row, "paper": config["paper"], "adaptive": {**row["adaptive"], **changed}}
        if suffix in individual:
            bits = int(suffix[len("individual-"):-len("bit")])
            expected.update(bits=bits, adaptive={**row["adaptive"], "bits": None})
        assert config == expected, suffix

