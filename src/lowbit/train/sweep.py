"""``lowbit sweep``: train a list of paper-table rows one after another, then tabulate our
top-1 beside the paper's.

A sweep spec is a YAML list of rows::

    - recipe: apot-resnet20-cifar10-float       # a recipe file or packaged recipe name
    - recipe: apot-resnet20-cifar10-4bit
      init: apot-resnet20-cifar10-float         # start from that earlier row's checkpoint
      set: {epochs: 200, data.limit: 2000}      # overrides, dotted keys
      name: r20-4bit-200                        # optional; default: the recipe's name

A row's config is the defaults, its recipe, its ``set``, then the command line's ``--set``;
``init`` (an earlier row's name: progressive initialization, APoT §4.2) comes last. Each row
trains in ``SWEEP_DIR/<name>/``, an ordinary run directory. After every row ``sweep.json`` and
``table.md`` (paper and ours side by side) are rewritten. A row that raises is recorded as
failed and the sweep goes on; running the same sweep again skips finished rows, resumes an
interrupted one from its last epoch and retries failed ones.
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lowbit.errors import LowbitError
from lowbit.files import atomic_write
from lowbit.quant.registry import get_method
from lowbit.train.checks import check_config
from lowbit.train.config import resolve_config
from lowbit.train.recipes import (
    find_recipe,
    paper_label,
    paper_top1,
    read_yaml,
    reproduction_top1,
)
from lowbit.train.run import run_training
from lowbit.train.run_config import RunConfig

ROW_KEYS = ("name", "recipe", "set", "init")


@dataclass(frozen=True)
class Row:
    """One line of a sweep: ``recipe`` (``None`` = the defaults) plus ``set`` overrides."""

    name: str
    recipe: str | None = None
    set: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # an earlier row's name


def load_spec(text: str | Path) -> list[Row]:
    """The rows of a sweep spec file (a path or a packaged spec name)."""
    path = find_recipe(text)
    entries = read_yaml(path)
    if not isinstance(entries, list) or not entries:
        raise LowbitError(
            f"sweep spec {str(path)!r} must be a YAML list of rows (recipe, set, init, name)"
        )
    rows = [_row(entry, index) for index, entry in enumerate(entries)]
    check_rows(rows)
    return rows


def _row(entry: Any, index: int) -> Row:
    if isinstance(entry, str):
        entry = {"recipe": entry}
    if not isinstance(entry, dict):
        raise LowbitError(f"sweep row {index + 1} must be a mapping with keys {ROW_KEYS}")
    unknown = sorted(set(entry) - set(ROW_KEYS))
    if unknown:
        raise LowbitError(
            f"sweep row {index + 1} has unknown keys {unknown}; use {', '.join(ROW_KEYS)}"
        )
    overrides = entry.get("set") or {}
    if not isinstance(overrides, dict):
        raise LowbitError(f"sweep row {index + 1}: set must map config keys to values")
    recipe = entry.get("recipe")
    name = entry.get("name") or (recipe_name(recipe) if recipe else "default")
    return Row(str(name), recipe, dict(overrides), entry.get("init"))


def recipe_name(recipe: str) -> str:
    """``"recipes/apot-resnet20-cifar10-4bit.yaml"`` -> ``"apot-resnet20-cifar10-4bit"``."""
    return Path(recipe).name.removesuffix(".yaml")


def rows_from_recipes(recipes: Sequence[str]) -> list[Row]:
    """One row per recipe (``lowbit sweep --recipe A --recipe B``)."""
    rows = [Row(recipe_name(recipe), recipe) for recipe in recipes]
    check_rows(rows)
    return rows


def check_rows(rows: Sequence[Row]) -> None:
    """Row names are unique directory names; ``init`` names an earlier row."""
    seen: set[str] = set()
    for row in rows:
        if row.name in seen:
            raise LowbitError(f"two sweep rows are named {row.name!r}; give each its own name")
        if not row.name or Path(row.name).name != row.name or row.name.startswith("."):
            raise LowbitError(f"sweep row name {row.name!r} must be a plain directory name")
        if row.init is not None and row.init not in seen:
            raise LowbitError(
                f"sweep row {row.name!r} starts from {row.init!r}, which is not an earlier row; "
                "to start from a file use set: {init: PATH}"
            )
        seen.add(row.name)


def start_checkpoint(run_dir: Path, config: RunConfig) -> Path:
    """The checkpoint a later row starts from: ``float.pt`` of a float-only run, else the
    quantized stage's ``best.pt``."""
    return run_dir / ("float.pt" if not config.epochs else "best.pt")


def row_configs(
    rows: Sequence[Row], overrides: Sequence[str], sweep_dir: Path
) -> dict[str, dict[str, Any]]:
    """Every row's resolved and checked config, before anything trains (a typo in the last
    row fails now, not hours later)."""
    configs: dict[str, RunConfig] = {}
    for row in rows:
        # JSON is YAML, so each ``set`` value reaches the config as ``--set`` would give it.
        texts = [f"{key}={json.dumps(value)}" for key, value in row.set.items()]
        texts += list(overrides)
        if row.init is not None:
            source = start_checkpoint(sweep_dir / row.init, configs[row.init])
            texts.append(f"init={json.dumps(str(source))}")
        try:
            config = check_config(
                resolve_config(find_recipe(row.recipe) if row.recipe else None, texts)
            )
        except LowbitError as error:
            raise LowbitError(f"sweep row {row.name!r}: {error}") from None
        configs[row.name] = config
    return configs


def _same_config(run_dir: Path, config: RunConfig) -> bool:
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    # A config written before a key existed meant what LEGACY says it meant.
    return RunConfig.stored(stored).to_dict() == yaml.safe_load(yaml.safe_dump(config.to_dict()))


def _has_progress(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file() or (run_dir / "last.pt").is_file()


def check_unchanged(sweep_dir: Path, configs: dict[str, RunConfig]) -> None:
    """A row with results or a checkpoint must not be continued under another config."""
    for name, config in configs.items():
        run_dir = sweep_dir / name
        if _has_progress(run_dir) and not _same_config(run_dir, config):
            raise LowbitError(
                f"sweep row {name!r} in {str(sweep_dir)!r} was run with another config; "
                f"delete {str(run_dir)!r} to rerun it, or give the sweep another --out"
            )


def bits_label(config: RunConfig | dict[str, Any]) -> str:
    """Weight / activation bits as the papers print them: ``"4/4"``, ``"32/32"`` for float,
    and for a network trained at several bit-widths the list of them, ``"8/6/4/2"``, as
    CoQuant's tables print it (activations take each weight bit-width in turn)."""
    config = RunConfig.of(config)
    if not config.epochs or config.bits is None:
        return "32/32"
    weights = config.bits_label
    if config.adaptive is not None:
        return weights  # every switchable method quantizes its inputs at each width too
    inputs = weights if get_method(config.method).input_quantizer else "32"
    return f"{weights}/{inputs}"


def _record(name: str, config: RunConfig, run_dir: Path) -> dict[str, Any]:
    record = {
        "name": name,
        "status": "pending",
        "run_dir": str(run_dir),
        "model": config.model.name,
        "data": config.data.name,
        "bits": bits_label(config),
        "paper": config.paper,
        "paper_top1": paper_top1(config.paper),
        "reproduction_top1": reproduction_top1(config.paper),
        "top1": None,
        "delta": None,
        "error": None,
        "seconds": None,
    }
    summary = finished_summary(run_dir)
    if summary is not None:
        _finish(record, summary)
    return record


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run that finished (``None`` for one that has not, or that failed or
    was interrupted: those mark ``status`` in their summary)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("status", "finished") == "finished" else None


def _finish(record: dict[str, Any], summary: dict[str, Any]) -> None:
    top1, paper = summary["top1"], record["paper_top1"]
    delta = None if paper is None else round(top1 - paper, 2)
    record.update(status="done", top1=top1, delta=delta, error=None, seconds=summary["seconds"])


def run_sweep(
    rows: Sequence[Row], sweep_dir: str | Path, overrides: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Train every unfinished row in order; returns the records also in ``sweep.json``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LowbitError(
            "lowbit sweep runs its rows in one process; under torchrun use lowbit train per row"
        )
    sweep_dir = Path(sweep_dir).resolve()
    configs = row_configs(rows, overrides, sweep_dir)
    check_unchanged(sweep_dir, configs)
    records = [_record(row.name, configs[row.name], sweep_dir / row.name) for row in rows]
    write_report(sweep_dir, records)
    for row, record in zip(rows, records):
        if record["status"] == "done":
            continue
        run_dir = sweep_dir / row.name
        try:
            if row.init is not None and finished_summary(sweep_dir / row.init) is None:
                raise LowbitError(f"it starts from row {row.init!r}, which did not finish")
            _prepare(run_dir, configs[row.name])
            _finish(record, run_training(configs[row.name], run_dir))
        except Exception as error:  # one row's failure must not lose the others
            record.update(status="failed", error=_one_line(error))
            if run_dir.is_dir():
                (run_dir / "error.log").write_text(traceback.format_exc())
        write_report(sweep_dir, records)
    return records


def _prepare(run_dir: Path, config: RunConfig) -> None:
    """A row with a ``last.pt`` resumes; otherwise it starts in a clean directory."""
    if (run_dir / "last.pt").is_file():
        return
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, LowbitError) else f"{type(error).__name__}: {text}"


def format_table(records: Sequence[dict[str, Any]], title: str) -> str:
    """Markdown in the papers' layout: model, bits (W/A), paper top-1, a reproduction's top-1
    (the row's ``paper.reproduction``), ours, difference."""
    lines = [
        f"# {title}",
        "",
        "Top-1 (%) on the test split; Δ = ours − paper; reproduction: an independent rerun's own "
        "result for the same row (e.g. the APoT reproducibility report's).",
        "",
        "| row | model | data | W/A | paper top-1 | reproduction top-1 | ours top-1 | Δ "
        "| paper row |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in records:
        paper = "-" if r["paper_top1"] is None else str(r["paper_top1"])
        reproduction = "-" if r["reproduction_top1"] is None else str(r["reproduction_top1"])
        ours = f"{r['top1']:.2f}" if r["status"] == "done" else r["status"]
        delta = "-" if r["delta"] is None else f"{r['delta']:+.2f}"
        source = paper_label(r["paper"]).replace("|", "/") or "-"
        lines.append(
            f"| {r['name']} | {r['model']} | {r['data']} | {r['bits']} | {paper} "
            f"| {reproduction} | {ours} "
            f"| {delta} | {source} |"
        )
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        lines += ["", "Failed rows (see error.log in the row's directory):"]
        lines += [f"- {r['name']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: Path, records: Sequence[dict[str, Any]]) -> None:
    """``sweep.json`` (every record) and ``table.md``, each replaced atomically."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    payload = {"sweep": str(sweep_dir), "rows": list(records)}
    _write_text(sweep_dir / "sweep.json", json.dumps(payload, indent=2) + "\n")
    _write_text(sweep_dir / "table.md", format_table(records, f"Sweep {sweep_dir.name}"))


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as temporary:
        temporary.write_text(text)
