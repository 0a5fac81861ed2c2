"""Testing one adaptive network at several bit-widths: per epoch over B, and the supplement's
Table 4 layout over 2..8 bits, where bit-widths outside B are zero-shot (BatchNorm
recalibrated on a copy of the model first); Delta_B against networks trained alone.

Delta_B (the supplement's §4 ablation: "lambda = 0 obtains 98.3% while lambda = 1 leads to
97.7% in Delta_B ... lambda = 0.001 ... achieves the best accuracy of 100.1%") is defined in the
main paper, which is not public (docs/coquant.md). A percentage around 100 that can exceed it
reads as the adaptive network's accuracy relative to networks trained at one bit-width each,
averaged over B; that is our reading:

    Delta_B = 100 / |B| * sum_{b in B} top1_adaptive(b) / top1_individual(b)   (in %).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from lowbit.adaptive.calibration import recalibrate_batchnorm
from lowbit.adaptive.switchable import model_bit_widths, set_bits
from lowbit.errors import LowbitError
from lowbit.quant.bit_widths import check_bits
from lowbit.train.loop import evaluate


def evaluate_bit_widths(
    model: nn.Module,
    bits: Sequence[int],
    test_loader: Any,
    train_loader: Any,
    calibration_batches: int,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Top-1/top-5/loss/n at each of ``bits``; a bit-width outside the model's set is
    ``zero_shot`` and tested on a copy whose BatchNorm statistics were re-estimated from
    ``calibration_batches`` batches of ``train_loader``. The model ends at its highest bits."""
    trained = model_bit_widths(model)
    if not bits:
        raise LowbitError("no bit-widths to test; give some, e.g. --bits 2,3,4,5,6,7,8")
    rows = []
    for b in bits:
        check_bits(b, "--bits")
        zero_shot = b not in trained
        subject = copy.deepcopy(model) if zero_shot else model
        set_bits(subject, b)
        used = recalibrate_batchnorm(subject, train_loader, calibration_batches) if zero_shot else 0
        metrics = evaluate(subject, test_loader, desc=f"eval {b}-bit", show_progress=show_progress)
        rows.append({"bits": b, "zero_shot": zero_shot, "calibration_batches": used, **metrics})
    set_bits(model, trained[0])
    return rows


def evaluate_adaptive(
    model: nn.Module, loader: Any, show_progress: bool = True
) -> dict[str, Any]:
    """The per-epoch test of an adaptive network: top-1 at every trained bit-width
    (``top1_by_bits``, keys as strings for JSON) and, as ``top1``/``top5``/``loss``, their
    means (what picks ``best.pt``)."""
    widths = model_bit_widths(model)
    rows = [evaluate(set_bits(model, b), loader, desc=f"eval {b}-bit", show_progress=show_progress)
            for b in widths]
    set_bits(model, widths[0])
    mean = {key: sum(row[key] for row in rows) / len(rows) for key in ("top1", "top5", "loss")}
    by_bits = {str(b): row["top1"] for b, row in zip(widths, rows)}
    return {**mean, "n": rows[0]["n"], "top1_by_bits": by_bits}


def relative_accuracy(
    rows: Sequence[dict[str, Any]], trained: Sequence[int], individual: Mapping[int, float]
) -> float:
    """Delta_B (%, the module's docstring): the mean over the trained bit-widths ``trained``
    of ``rows``' top-1 divided by ``individual[b]``, the top-1 of a network trained at ``b``
    alone."""
    measured = {row["bits"]: row["top1"] for row in rows}
    missing = [b for b in trained if b not in measured or b not in individual]
    if missing:
        raise LowbitError(
            "Delta_B needs the adaptive network's top-1 and an individual network's at every "
            f"bit-width in B; missing {', '.join(map(str, missing))} (test them with --bits and "
            "give them with --individual B=TOP1_OR_RUN,...)"
        )
    return 100 * sum(measured[b] / individual[b] for b in trained) / len(trained)


def parse_individual(text: str) -> dict[int, float]:
    """``--individual 8=95.1,4=runs/r18-4bit``: per bit-width, a top-1 (%) or a finished run
    (its directory or ``summary.json``, whose ``top1`` is read)."""
    found: dict[int, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        bits, sep, value = part.partition("=")
        if not sep or not bits.strip().isdigit():
            raise LowbitError(
                f"--individual takes BITS=TOP1_OR_RUN pairs separated by commas, got {part!r}"
            )
        found[int(bits)] = _top1_of(value.strip())
    if not found:
        raise LowbitError("--individual is empty; give e.g. 8=95.1,4=runs/<4-bit run>")
    return found


def _top1_of(value: str) -> float:
    try:
        top1 = float(value)
    except ValueError:
        top1 = _summary_top1(Path(value))
    if not 0 < top1 <= 100:
        raise LowbitError(f"--individual: a top-1 is a percentage in (0, 100], got {top1}")
    return float(top1)


def _summary_top1(path: Path) -> float:
    """The ``top1`` of a finished run (its directory or its ``summary.json``)."""
    summary = path / "summary.json" if path.is_dir() else path
    try:
        top1 = json.loads(summary.read_text()).get("top1")
    except (OSError, ValueError, AttributeError):
        top1 = None
    if not isinstance(top1, (int, float)):
        raise LowbitError(
            f"--individual: {str(path)!r} is neither a top-1 nor a finished run (a directory "
            "or summary.json with its top1)"
        )
    return float(top1)


def format_bits_table(
    rows: Sequence[dict[str, Any]],
    title: str,
    individual: Mapping[int, float] | None = None,
    delta_b: float | None = None,
) -> str:
    """Rows ``{bits, top1, top5, zero_shot, calibration_batches}`` in the layout of the
    supplement's Table 4 (highest bit-width first), zero-shot rows marked; with
    ``individual`` (top-1 of networks trained alone), their column and ``delta_b``."""
    header = f"{'bits':<10}{'top-1':>8}{'top-5':>9}"
    lines = [title, header + (f"{'alone':>9}" if individual else "")]
    for row in sorted(rows, key=lambda r: -r["bits"]):
        mark = "  zero-shot*" if row["zero_shot"] else ""
        label = f"{row['bits']}-bit"
        alone = ""
        if individual:
            reference = individual.get(row["bits"])
            alone = f"{reference:>8.2f}%" if reference is not None else f"{'-':>9}"
        lines.append(f"{label:<10}{row['top1']:>7.2f}%{row['top5']:>8.2f}%{alone}{mark}")
    calibrated = [row["calibration_batches"] for row in rows if row["zero_shot"]]
    if calibrated:
        lines.append(
            f"* zero-shot: not in B; BatchNorm recalibrated on {max(calibrated)} training batches"
        )
    if delta_b is not None:
        lines.append(
            f"Delta_B = {delta_b:.1f}%: mean over B of top-1 / top-1 trained alone "
            "(CoQuant supplement §4; our reading, lowbit.adaptive.evaluation)"
        )
    return "\n".join(lines)
