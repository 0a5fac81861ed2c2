"""``metrics.jsonl``: one JSON record per line, of two kinds.

* ``"kind": "epoch"`` (runs written before the key existed have none): one per trained epoch,
  written by ``lowbit.train.stage`` (``stage``, ``epoch`` = epochs done, ``step`` = steps
  done in the stage, lr, training loss and top-1, validation and test metrics, seconds);
* ``"kind": "step"``: one per sampled step (``lowbit.train.dynamics``): ``stage``,
  ``epoch`` (the 1-based epoch it belongs to), ``step`` (0-based, counted over the stage),
  loss, lr and ``quantizers`` (each quantizer's statistics, by module name).

A resumed run first drops what was written after its checkpoint (``trim_to_checkpoint``),
so no step or epoch appears twice and none is lost.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lowbit.errors import LowbitError
from lowbit.train.stage import STAGES

METRICS = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of ``run_dir``'s ``metrics.jsonl``; a clear error when there is none."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise LowbitError(f"{str(run_dir)!r} has no {METRICS}: is it a lowbit run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def epoch_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-epoch records (a record without ``kind`` is one: older runs)."""
    return [r for r in records if r.get("kind", "epoch") == "epoch"]


def step_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sampled-step records (training dynamics)."""
    return [r for r in records if r.get("kind") == "step"]


def trim_to_checkpoint(run_dir: Path, stage: str, epochs_done: int) -> None:
    """Drop the records written after a checkpoint taken ``epochs_done`` epochs into
    ``stage``: those of later stages and of later epochs of ``stage`` (the epoch a killed run
    was in is trained, sampled and logged again). The file is replaced atomically."""
    path = run_dir / METRICS
    if not path.is_file():
        return
    position = STAGES.index(stage)
    lines = path.read_text().splitlines()
    kept = [
        line for line in lines
        if line.strip() and _written_before(json.loads(line), position, epochs_done)
    ]
    if len(kept) == len(lines):
        return
    partial = path.with_name(f".{METRICS}.{os.getpid()}")
    partial.write_text("".join(line + "\n" for line in kept))
    os.replace(partial, path)


def _written_before(record: dict[str, Any], position: int, epochs_done: int) -> bool:
    record_position = STAGES.index(record["stage"])
    return record_position < position or (
        record_position == position and record["epoch"] <= epochs_done
    )
