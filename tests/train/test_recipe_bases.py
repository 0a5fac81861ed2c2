"""Recipes that start from another (``base:``): chains, loops, missing bases, packaged bases,
and the one-line errors for files that are not recipes."""

from pathlib import Path

import pytest
import yaml

from lowbit.errors import LowbitError
from lowbit.train.config import load_recipe, resolve_config
from lowbit.train.recipes import RECIPE_DIR, describe_packaged, find_recipe, packaged, read_yaml


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one_line_error(match, call, *args):
    with pytest.raises(LowbitError, match=match) as error:
        call(*args)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_a_chain_of_bases_merges_mappings_key_by_key_and_replaces_the_rest(tmp_path):
    write(tmp_path / "common" / "c.yaml", (
        "epochs: 1\nbits: 2\noptimizer: {weight_decay: 0.0}\n"
        "schedule: {name: multistep, milestones: [1, 2]}\n"
    ))
    write(tmp_path / "b.yaml", (
        "base: common/c.yaml\nepochs: 2\noptimizer: {name: adam}\n"
        "overrides: {conv1: {bits: 8}}\n"
    ))
    row = write(tmp_path / "rows" / "a.yaml", (
        "base: ../b.yaml\nepochs: 3\noptimizer: {lr: 0.5}\nschedule: {milestones: [5]}\n"
        "overrides: {conv1: {method: maxscale}}\n"
    ))
    assert load_recipe(row) == {
        "epochs": 3,
        "bits": 2,
        "optimizer": {"weight_decay": 0.0, "name": "adam", "lr": 0.5},
        "schedule": {"name": "multistep", "milestones": [5]},
        "overrides": {"conv1": {"bits": 8, "method": "maxscale"}},
    }
    config = resolve_config(row)
    assert config["optimizer"]["momentum"] == 0.9  # DEFAULTS still fill in what no layer sets


def test_a_loop_of_bases_is_an_error_naming_the_chain(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\nepochs: 1\n")
    write(tmp_path / "b.yaml", "base: a.yaml\nbits: 3\n")
    message = one_line_error("bases form a loop", load_recipe, tmp_path / "a.yaml")
    assert message.count("a.yaml") == 2 and "b.yaml -> " in message
    write(tmp_path / "self.yaml", "base: self.yaml\n")
    one_line_error("bases form a loop", load_recipe, tmp_path / "self.yaml")


def test_a_missing_base_is_an_error(tmp_path):
    row = write(tmp_path / "a.yaml", "base: no-such-recipe\nepochs: 1\n")
    one_line_error("'no-such-recipe' of .*a.yaml.* neither a file", load_recipe, row)
    row.write_text("base: [a.yaml]\n")
    one_line_error("base must be a recipe name or path", load_recipe, row)


def test_a_base_must_be_a_recipe_not_a_sweep(tmp_path):
    row = write(tmp_path / "a.yaml", "base: sweep-apot-table2-resnet20\n")
    one_line_error("the base of .*must be a mapping", load_recipe, row)


def test_a_user_recipe_starts_from_a_packaged_row(tmp_path, monkeypatch):
    """Found by name from anywhere; the row's values, paper entry included, come along."""
    monkeypatch.chdir(tmp_path)
    mine = write(tmp_path / "mine" / "short.yaml", (
        "base: apot-resnet20-cifar10-4bit\nepochs: 1\ndata: {limit: 2000}\n"
    ))
    expected = resolve_config("apot-resnet20-cifar10-4bit", ["epochs=1", "data.limit=2000"])
    assert resolve_config(mine) == expected
    assert expected["paper"]["top1"] == 92.3
    for text in ("apot-resnet20-cifar10-4bit.yaml", "recipes/apot-resnet20-cifar10-4bit.yaml"):
        mine.write_text(f"base: {text}\nepochs: 1\ndata: {{limit: 2000}}\n")
        assert resolve_config(mine) == expected
    mine.write_text("base: apot-resnet20-cifar10-4bit\npaper: null\n")
    assert resolve_config(mine)["paper"] is None
    # A file by that name next to the recipe wins over the packaged one.
    write(tmp_path / "mine" / "apot-resnet20-cifar10-4bit", "bits: 3\n")
    assert load_recipe(mine) == {"bits": 3, "paper": None}


def test_shared_bases_are_not_listed_nor_run_by_name_and_each_is_used():
    bases = {path.name for path in RECIPE_DIR.glob("_*.yaml")}
    assert bases and not any(name.startswith("_") for name in packaged())
    assert not any(name.startswith("_") for _, name, _ in describe_packaged())
    one_line_error("not a packaged recipe name", find_recipe, "_apot-cifar")
    named = {yaml.safe_load(path.read_text()).get("base") for path in RECIPE_DIR.glob("*.yaml")
             if isinstance(yaml.safe_load(path.read_text()), dict)}
    assert bases <= named


def test_recipe_files_that_are_not_recipes_give_one_line_errors(tmp_path, monkeypatch):
    broken = write(tmp_path / "broken.yaml", "epochs: [1,\nbits: 2\n")
    one_line_error("broken.yaml' is not valid YAML", load_recipe, broken)
    in_base = write(tmp_path / "row.yaml", "base: broken.yaml\n")
    one_line_error("broken.yaml' is not valid YAML", load_recipe, in_base)
    listed = write(tmp_path / "list.yaml", "- recipe: apot-resnet20-cifar10-4bit\n")
    one_line_error("is a sweep spec, not a recipe", load_recipe, listed)
    for text in ("just words\n", "", "3\n"):
        scalar = write(tmp_path / "scalar.yaml", text)
        one_line_error("must be a mapping of config keys", load_recipe, scalar)
    one_line_error("is a directory", load_recipe, tmp_path)
    one_line_error("is a directory", find_recipe, tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00epochs")
    one_line_error("not UTF-8 text", load_recipe, binary)

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    # The tests may run as root, whom file modes do not stop.
    monkeypatch.setattr(Path, "read_text", refuse)
    one_line_error("cannot read .*scalar.yaml': Permission denied", read_yaml, scalar)
