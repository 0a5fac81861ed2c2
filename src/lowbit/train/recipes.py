"""The packaged recipes (``src/lowbit/recipes/*.yaml``): find one by name, describe its row.

A file there whose top level is a mapping is a recipe (config keys, one paper table row); one
whose top level is a list is a sweep spec (rows for ``lowbit sweep``). Either can be named
without a path: ``lowbit train apot-resnet20-cifar10-4bit`` and
``lowbit train recipes/apot-resnet20-cifar10-4bit.yaml`` both find the packaged file when no
such file exists where the user is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lowbit.errors import LowbitError

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"


def packaged() -> dict[str, Path]:
    """Name (file stem) -> path of every packaged recipe and sweep spec, sorted by name."""
    return {path.stem: path for path in sorted(RECIPE_DIR.glob("*.yaml"))}


def find_recipe(text: str | Path) -> Path:
    """The file ``text`` names: an existing path, else a packaged recipe or sweep spec named
    ``NAME``, ``NAME.yaml`` or ``recipes/NAME.yaml``."""
    path = Path(text)
    if path.is_file():
        return path
    if path.parent.name in ("", "recipes") and path.suffix in ("", ".yaml"):
        name = path.name[: -len(".yaml")] if path.suffix == ".yaml" else path.name
        found = packaged().get(name)
        if found is not None:
            return found
    raise LowbitError(
        f"recipe {str(text)!r} does not exist as a file and is not a packaged recipe name; "
        "`lowbit recipes` lists the packaged ones"
    )


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        detail = " ".join(str(error).split())  # the CLI prints errors on one line
        raise LowbitError(f"{str(path)!r} is not valid YAML: {detail}") from None


def paper_top1(paper: Any) -> float | None:
    """The paper's top-1 from a recipe's ``paper`` entry, when it gives one."""
    if isinstance(paper, dict) and isinstance(paper.get("top1"), (int, float)):
        return float(paper["top1"])
    return None


def paper_label(paper: Any) -> str:
    """``"APoT (Li et al., ICLR 2020) Table 2: ResNet-20, APoT, 4 bits"`` from a ``paper``
    entry (a free-form string is shown as it is)."""
    if isinstance(paper, dict):
        source = " ".join(str(paper[key]) for key in ("source", "table") if paper.get(key))
        row = paper.get("row")
        return f"{source}: {row}" if row else source
    return "" if paper is None else str(paper)


def describe_packaged() -> list[tuple[str, str, str]]:
    """``(kind, name, description)`` for each packaged file: a recipe's paper row and number,
    a sweep's rows."""
    found = []
    for name, path in packaged().items():
        content = read_yaml(path)
        if isinstance(content, list):
            rows = [entry.get("name") or entry.get("recipe", "-") for entry in content]
            found.append(("sweep", name, " -> ".join(str(row) for row in rows)))
        else:
            paper = content.get("paper") if isinstance(content, dict) else None
            top1 = paper_top1(paper)
            number = f"  top-1 {top1}" if top1 is not None else ""
            found.append(("recipe", name, paper_label(paper) + number))
    return found
