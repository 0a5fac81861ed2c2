"""The packaged recipes after moving each family's shared values into bases: every name that
existed before still exists and resolves to the configuration it did, and the files shrank."""

from pathlib import Path

import pytest
import yaml

from lowbit.train.config import resolve_config
from lowbit.train.recipes import RECIPE_DIR, find_recipe, packaged, read_yaml

# {name: content} of every packaged file before recipes had bases.
BEFORE = yaml.safe_load((Path(__file__).parent / "data" / "recipes_before.yaml").read_text())
# Runs then trained on every training image; validation splits came later, and the paper rows
# keep training on every image as the papers did.
NO_VALIDATION = {"data": {"val_fraction": 0}}


def _as_before(content: dict) -> dict:
    return {**content, "data": {**content.get("data", {}), **NO_VALIDATION["data"]}}


def test_every_name_is_still_packaged():
    assert len(BEFORE) == 117 and set(BEFORE) <= set(packaged())


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_recipe_resolves_to_its_old_configuration(name, tmp_path):
    """Both sides go through today's DEFAULTS and presets; sweep specs compare as lists."""
    old = BEFORE[name]
    if isinstance(old, list):
        assert read_yaml(find_recipe(name)) == old
        return
    old_file = tmp_path / "old.yaml"
    old_file.write_text(yaml.safe_dump(_as_before(old)))
    assert resolve_config(name) == resolve_config(old_file)


RECIPES = sorted(name for name, old in BEFORE.items() if isinstance(old, dict))


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_with_its_bases_sets_the_keys_it_set(name):
    """Key for key, not only after DEFAULTS: a later change to DEFAULTS moves old and new alike."""
    assert read_yaml(find_recipe(name)) == _as_before(BEFORE[name])


def test_the_recipe_files_shrank():
    lines = sum(len(path.read_text().splitlines()) for path in RECIPE_DIR.glob("*.yaml"))
    assert lines < 2600  # 4485 lines as copies; 2419 with the bases
