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


def _without_reproduction(content: dict) -> dict:
    """A paper entry's ``reproduction`` (an independent rerun's number, e.g. the APoT
    reproducibility report's) was added to some rows later; it changes no setting."""
    paper = content.get("paper")
    if not isinstance(paper, dict) or "reproduction" not in paper:
        return content
    return {**content, "paper": {k: v for k, v in paper.items() if k != "reproduction"}}


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
    assert _without_reproduction(resolve_config(name)) == resolve_config(old_file)


RECIPES = sorted(name for name, old in BEFORE.items() if isinstance(old, dict))


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_with_its_bases_sets_the_keys_it_set(name):
    """Key for key, not only after DEFAULTS: a later change to DEFAULTS moves old and new alike."""
    assert _without_reproduction(read_yaml(find_recipe(name))) == _as_before(BEFORE[name])


def test_the_recipe_files_shrank():
    """The old rows and the shared bases (rows added since have files of their own)."""
    old_rows = [RECIPE_DIR / f"{name}.yaml" for name in BEFORE]
    files = [*old_rows, *RECIPE_DIR.glob("_*.yaml")]
    lines = sum(len(path.read_text().splitlines()) for path in files)
    assert lines < 2600  # 4485 lines as copies; 2419 with the bases
