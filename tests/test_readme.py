"""The README's Python example runs as printed; its ``--set`` examples are valid settings."""

import re
from pathlib import Path

import pytest

from lowbit.train.checks import check_config
from lowbit.train.config import resolve_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]" && python -m pytest' in README.read_text()
    assert 'pip install -e ".[dev]" && python -m pytest' in ci


# ``--set KEY=VALUE``, the value possibly quoted; ``KEY=...`` is a placeholder.
SET_FLAG = re.compile(r"""--set\s+("[^"]+"|'[^']+'|[^\s`]+)""")


def readme_set_examples() -> list[list[str]]:
    """The ``--set`` values of each README line that has some (one command's settings)."""
    lines = (SET_FLAG.findall(line) for line in README.read_text().splitlines())
    examples = [[value.strip("\"'") for value in found] for found in lines if found]
    return [values for values in examples if not any(v.endswith("=...") for v in values)]


@pytest.mark.parametrize("settings", readme_set_examples(), ids=" ".join)
def test_readme_set_examples_name_real_keys_with_accepted_values(settings):
    """An unknown key fails in resolve_config, a value the key does not take in check_config."""
    check_config(resolve_config(None, settings))
