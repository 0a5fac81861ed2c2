"""The packaged paper recipes: valid configs, the papers' numbers, found by name."""

import subprocess
import sys

import pytest

from lowbit.errors import LowbitError
from lowbit.models import build_model
from lowbit.train.config import DEFAULTS, resolve_config
from lowbit.train.recipes import find_recipe, packaged, read_yaml
from lowbit.train.run import check_config, quantize_from_config
from lowbit.train.sweep import load_spec, row_configs

# APoT's recipes and sweeps; CoQuant's are checked in tests/adaptive, the ablations of APoT
# Table 3 and App. B Table 4 in test_apot_ablations.py.
RECIPES = sorted(
    name for name in packaged()
    if name.startswith("apot-") and "-table3-" not in name and "-table4-" not in name
)
SWEEPS = sorted(name for name in packaged() if name.startswith("sweep-apot-"))
CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}

# APoT Table 2 (CIFAR-10) and Table 1 (ImageNet, top-1); the reproducibility report's
# Table 3 (CIFAR-100) and Table 4 (CIFAR-10, cosine schedule).
PAPER_TOP1 = {
    "apot-resnet20-cifar10": {"float": 91.6, "4bit": 92.3, "3bit": 92.2, "2bit": 91.0},
    "apot-resnet56-cifar10": {"float": 93.2, "4bit": 94.0, "3bit": 93.9, "2bit": 92.9},
    "apot-resnet18-imagenet": {"5bit": 70.9, "4bit": 70.7, "3bit": 69.9, "2bit": 67.3},
    "apot-resnet34-imagenet": {"5bit": 73.9, "4bit": 73.8, "3bit": 73.4, "2bit": 70.9},
    "apot-resnet50-imagenet": {"5bit": 76.7, "4bit": 76.6, "3bit": 75.8, "2bit": 73.4},
    "apot-repro-resnet20-cifar100": {"float": 69.09, "4bit": 68.56, "3bit": 67.56, "2bit": 63.92},
    "apot-repro-resnet56-cifar100": {"float": 72.92, "4bit": 72.19, "3bit": 71.47, "2bit": 69.64},
    "apot-repro-resnet20-cifar10-cosine": {
        "float": 92.94, "4bit": 92.6, "3bit": 92.17, "2bit": 90.67,
    },
}


def family(name):
    return name.rsplit("-", 1)[0]


def test_every_paper_row_has_a_recipe_with_the_papers_number():
    """APoT Tables 1-2 and the report's Tables 3-4, row by row."""
    expected = {
        f"{fam}-{suffix}": top1 for fam, rows in PAPER_TOP1.items() for suffix, top1 in rows.items()
    }
    assert set(RECIPES) == set(expected)
    for name, top1 in expected.items():
        paper = resolve_config(find_recipe(name))["paper"]
        assert paper["top1"] == top1, name
        assert paper["table"] in ("Table 1", "Table 2", "Table 3", "Table 4")
        assert paper["source"] and paper["row"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_a_valid_config_that_quantizes_its_model(name):
    """Only known keys (resolve_config rejects others), registered model / data / method, and
    the first/last-layer overrides match the model's layers."""
    raw = read_yaml(find_recipe(name))
    assert set(raw) <= set(DEFAULTS)
    config = resolve_config(find_recipe(name))
    check_config(config)
    assert config["data"]["name"] in name and config["model"]["name"] in name
    if config["epochs"]:
        assert name.endswith(f"-{config['bits']}bit") and config["float_epochs"] == 0
        model = build_model(config["model"]["name"], num_classes=CLASSES[config["data"]["name"]])
        quantize_from_config(model, config)
        assert type(model.conv1.weight_quantizer).__name__ == "MaxScaleQuantizer"
        assert model.layer1[0].conv1.input_quantizer is not None
    else:
        assert name.endswith("-float") and config["float_epochs"] > 0


def test_recipes_of_one_family_differ_only_in_bits_number_and_weight_decay():
    """A family shares its recipe; APoT §C.2 lowers weight decay at 2 bits (ImageNet 2e-5; the
    authors' CIFAR scripts 3e-5)."""
    varying = ("bits", "paper", "init", "optimizer", "quantizer_optim")
    by_family = {}
    for name in RECIPES:
        config = resolve_config(find_recipe(name))
        if not config["epochs"]:
            continue
        wd = config["optimizer"]["weight_decay"]
        assert wd == ((2e-5 if "imagenet" in name else 3e-5) if config["bits"] == 2 else 1e-4)
        optim = {k: v for k, v in config["optimizer"].items() if k != "weight_decay"}
        quant = {k: v for k, v in config["quantizer_optim"].items() if k != "weight_decay"}
        shared = {k: v for k, v in config.items() if k not in varying}
        by_family.setdefault(family(name), []).append((shared, optim, quant))
    assert len(by_family) == len(PAPER_TOP1)
    for fam, configs in by_family.items():
        assert all(c == configs[0] for c in configs), fam


def test_activation_alpha_init_is_8_on_cifar_and_6_on_imagenet():
    """APoT §C.2 and the authors' code: alpha starts at 3.0 on weights, 8.0 (CIFAR) or 6.0
    (ImageNet) on activations."""
    for name in RECIPES:
        config = resolve_config(find_recipe(name))
        if config["epochs"]:
            imagenet = config["data"]["name"] == "imagenet"
            assert config["input_options"]["alpha"] == (6.0 if imagenet else 8.0)
            assert config["weight_options"]["alpha"] == 3.0


@pytest.mark.parametrize("name", SWEEPS)
def test_packaged_sweep_is_a_progressive_chain(name, tmp_path):
    """Each row starts from the row before, one bit-width higher (float -> 4 -> 3 -> 2, or
    5 -> 4 -> 3 -> 2 on ImageNet)."""
    rows = load_spec(name)
    configs = row_configs(rows, [], tmp_path)
    if configs[rows[0].name].epochs:  # ImageNet: --set init gives the 5-bit row's start
        configs = row_configs(rows, ["init=start.pt"], tmp_path)
        assert configs[rows[0].name].init == "start.pt"
    assert [row.init for row in rows[1:]] == [row.name for row in rows[:-1]]
    bits = [configs[row.name].bits if configs[row.name].epochs else 32 for row in rows]
    assert bits in ([32, 4, 3, 2], [5, 4, 3, 2])
    for row in rows[1:]:
        assert configs[row.name].init.startswith(str(tmp_path / row.init))


def test_recipe_found_by_name_path_or_local_file(tmp_path, monkeypatch):
    packaged_path = packaged()["apot-resnet20-cifar10-4bit"]
    monkeypatch.chdir(tmp_path)
    for text in (
        "apot-resnet20-cifar10-4bit",
        "apot-resnet20-cifar10-4bit.yaml",
        "recipes/apot-resnet20-cifar10-4bit.yaml",
    ):
        assert find_recipe(text) == packaged_path
    local = tmp_path / "apot-resnet20-cifar10-4bit.yaml"
    local.write_text("bits: 3\n")
    assert find_recipe("apot-resnet20-cifar10-4bit.yaml").resolve() == local  # a file wins
    for text in ("no-such-recipe", "elsewhere/apot-resnet20-cifar10-4bit.yaml"):
        with pytest.raises(LowbitError, match="does not exist"):
            find_recipe(text)


def lowbit(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "lowbit", *args], capture_output=True, text=True, cwd=cwd,
        timeout=300,
    )


def test_cli_lists_recipes_and_trains_one_by_name(tmp_path):
    listing = lowbit("recipes", cwd=tmp_path)
    assert listing.returncode == 0
    assert "apot-resnet20-cifar10-4bit" in listing.stdout and "Table 2" in listing.stdout
    assert "sweep-apot-table2-resnet20" in listing.stdout
    # Found by name: the run gets as far as the recipe's data set, which is missing here.
    result = lowbit(
        "train", "apot-resnet20-cifar10-4bit", "--data-dir", str(tmp_path / "none"), cwd=tmp_path
    )
    assert result.returncode == 2
    assert "data directory" in result.stderr and "cifar-10" in result.stderr
