"""Testing one adaptive network at several bit-widths: per epoch over B, and the supplement's
Table 4 layout over 2..8 bits, where bit-widths outside B are zero-shot (BatchNorm
recalibrated on a copy of the model first)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
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


def format_bits_table(rows: Sequence[dict[str, Any]], title: str) -> str:
    """Rows ``{bits, top1, top5, zero_shot, calibration_batches}`` in the layout of the
    supplement's Table 4 (highest bit-width first), zero-shot rows marked."""
    lines = [title, f"{'bits':<10}{'top-1':>8}{'top-5':>9}"]
    for row in sorted(rows, key=lambda r: -r["bits"]):
        mark = "  zero-shot*" if row["zero_shot"] else ""
        label = f"{row['bits']}-bit"
        lines.append(f"{label:<10}{row['top1']:>7.2f}%{row['top5']:>8.2f}%{mark}")
    calibrated = [row["calibration_batches"] for row in rows if row["zero_shot"]]
    if calibrated:
        lines.append(
            f"* zero-shot: not in B; BatchNorm recalibrated on {max(calibrated)} training batches"
        )
    return "\n".join(lines)
