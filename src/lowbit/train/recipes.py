"""The packaged recipes (``src/lowbit/recipes/*.yaml``): find one by name, read it with its
bases, describe its row.

A file there whose top level is a mapping is a recipe (config keys, one paper table row); one
whose top level is a list is a sweep spec (rows for ``lowbit sweep``). Either can be named
without a path: ``lowbit train apot-resnet20-cifar10-4bit`` and
``lowbit train recipes/apot-resnet20-cifar10-4bit.yaml`` both find the packaged file when no
such file exists where the user is.

A recipe may start from another: ``base: NAME`` (a file relative to the recipe's own directory,
else a packaged recipe's name) is read first, with its own base, and the recipe's values are
merged over it as config layers are: mappings key by key, anything else replaces. The packaged
rows of one family share such a base; files named ``_*.yaml`` are those shared bases, partial
configs that are not listed or run by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lowbit.errors import LowbitError

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
BASE_KEY = "base"


def packaged() -> dict[str, Path]:
    """Name (file stem) -> path of every packaged recipe and sweep spec, sorted by name; the
    shared bases (``_*.yaml``) are left out."""
    return {name: path for name, path in _packaged_files().items() if not name.startswith("_")}


def _packaged_files() -> dict[str, Path]:
    return {path.stem: path for path in sorted(RECIPE_DIR.glob("*.yaml"))}


def _packaged_name(path: Path) -> str | None:
    """``NAME`` when ``path`` is ``NAME``, ``NAME.yaml`` or ``recipes/NAME.yaml``, else None."""
    if path.parent.name in ("", "recipes") and path.suffix in ("", ".yaml"):
        return path.name[: -len(".yaml")] if path.suffix == ".yaml" else path.name
    return None


def find_recipe(text: str | Path) -> Path:
    """The file ``text`` names: an existing path, else a packaged recipe or sweep spec named
    ``NAME``, ``NAME.yaml`` or ``recipes/NAME.yaml``."""
    path = Path(text)
    if path.is_file():
        return path
    name = _packaged_name(path)
    found = packaged().get(name) if name else None
    if found is not None:
        return found
    if path.is_dir():
        raise LowbitError(f"recipe {str(text)!r} is a directory; give a recipe file or name")
    raise LowbitError(
        f"recipe {str(text)!r} does not exist as a file and is not a packaged recipe name; "
        "`lowbit recipes` lists the packaged ones"
    )


def read_yaml(path: Path) -> Any:
    """The content of a recipe or sweep spec file: a sweep's list as written, a recipe's
    mapping with its ``base`` chain merged in (and no ``base`` key left)."""
    content = _load(path)
    if isinstance(content, dict):
        return _with_bases(path, content, (path,))
    return content


def _load(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise LowbitError(f"cannot read {str(path)!r}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise LowbitError(f"{str(path)!r} is not UTF-8 text, so not a YAML recipe") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        detail = " ".join(str(error).split())  # the CLI prints errors on one line
        raise LowbitError(f"{str(path)!r} is not valid YAML: {detail}") from None


def _with_bases(path: Path, content: dict[str, Any], chain: tuple[Path, ...]) -> dict[str, Any]:
    """``content`` (read from ``path``, reached through ``chain``) over its base chain."""
    values = {key: value for key, value in content.items() if key != BASE_KEY}
    if BASE_KEY not in content:
        return values
    base = _find_base(content[BASE_KEY], path)
    if base.resolve() in {seen.resolve() for seen in chain}:
        names = " -> ".join(str(seen) for seen in (*chain, base))
        raise LowbitError(f"recipe bases form a loop: {names}")
    base_content = _load(base)
    if not isinstance(base_content, dict):
        raise LowbitError(
            f"{str(base)!r}, the base of {str(path)!r}, must be a mapping of config keys"
        )
    return _merge(_with_bases(base, base_content, (*chain, base)), values)


def _find_base(text: Any, recipe: Path) -> Path:
    """The file ``base: text`` in ``recipe`` names: a path relative to the recipe's directory,
    else a packaged recipe or shared base."""
    if not isinstance(text, str) or not text:
        raise LowbitError(f"{str(recipe)!r}: base must be a recipe name or path, got {text!r}")
    path = recipe.parent / text
    if path.is_file():
        return path
    name = _packaged_name(Path(text))
    found = _packaged_files().get(name) if name else None
    if found is None:
        raise LowbitError(
            f"the base {text!r} of {str(recipe)!r} is neither a file next to it nor a packaged "
            "recipe; `lowbit recipes` lists the packaged ones"
        )
    return found


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base`` as config layers merge (``config.merge``), without its key
    check: a base holds only what its rows share."""
    result = dict(base)
    for key, value in update.items():
        if isinstance(result.get(key), dict) and isinstance(value, dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def paper_top1(paper: Any) -> float | None:
    """The paper's top-1 from a recipe's ``paper`` entry, when it gives one."""
    if isinstance(paper, dict) and isinstance(paper.get("top1"), (int, float)):
        return float(paper["top1"])
    return None


def reproduction_top1(paper: Any) -> float | None:
    """An independent reproduction's own top-1 for the same row, from the ``paper`` entry's
    ``reproduction`` mapping (``source``, ``table``, ``top1``: e.g. the APoT reproducibility
    report's result beside the APoT paper's), when it gives one."""
    if isinstance(paper, dict):
        return paper_top1(paper.get("reproduction"))
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
            top1, reproduced = paper_top1(paper), reproduction_top1(paper)
            number = f"  top-1 {top1}" if top1 is not None else ""
            number += f" (reproduction {reproduced})" if reproduced is not None else ""
            if isinstance(paper, dict) and paper.get("delta_b") is not None:
                number += f"  Delta_B {paper['delta_b']}%"
            found.append(("recipe", name, paper_label(paper) + number))
    return found
