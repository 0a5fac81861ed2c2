"""APoT Fig. 6 for a model, per layer: the clipping and projection errors of Eq. 14 at the
threshold the quantizer uses (learned by RCF, or max|W| without it) and at the threshold that
minimizes the quantization error (QEM, App. C.1), in the units of the normalized weights
(Eq. 9).

    lowbit analyze runs/<run> [--plot fig6.png] [--json]
    lowbit analyze resnet18 --method apot --bits 5      # a zoo model, alpha at its init
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.analysis.error import ThresholdComparison, threshold_comparisons

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DESCRIPTION = " ".join(__doc__.split("\n\n")[0].split())  # the first paragraph, for --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``lowbit analyze``'s own options (the model options come from the CLI)."""
    parser.add_argument("--plot", metavar="FILE", help="save the per-layer bars to this PNG")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Print the Fig. 6 table of ``args.source`` (and save the plot if asked)."""
    from lowbit.analysis.report import load_model
    from lowbit.evaluate import find_checkpoint

    source = args.source
    if Path(source).is_dir():
        source = str(find_checkpoint(source))
    model, info = load_model(source, args.method, args.bits, args.first_last_bits)
    rows = threshold_comparisons(model)
    title = f"{info['name']} {info['method']} {info['bits']}-bit"
    if args.json:
        print(json.dumps({"model": title, "layers": [asdict(row) for row in rows]}))
    else:
        print(format_table(rows, title))
    if args.plot:
        plot_error_split(rows, args.plot, title)
        print(f"wrote {args.plot}")
    return 0


def format_table(rows: list[ThresholdComparison], title: str) -> str:
    """One line per layer: bits, each threshold and its clipping / projection errors."""
    lines = [
        f"{title}: Eq. 14 errors of the weights (normalized, Eq. 9) at the quantizer's alpha "
        "and at QEM's",
        f"{'layer':<24}{'bits':>5}{'alpha':>8}{'clip':>11}{'proj':>11}"
        f"{'QEM alpha':>11}{'clip':>11}{'proj':>11}",
    ]
    for row in rows:
        lines.append(
            f"{row.name:<24}{row.bits:>5}{row.alpha:>8.3f}{row.clip_mse:>11.3e}"
            f"{row.projection_mse:>11.3e}{row.qem_alpha:>11.3f}{row.qem_clip_mse:>11.3e}"
            f"{row.qem_projection_mse:>11.3e}"
        )
    return "\n".join(lines)


def plot_error_split(rows: list[ThresholdComparison], path: str | Path, title: str) -> Figure:
    """APoT Fig. 6: per layer, the clipping error stacked on the projection error, the
    quantizer's threshold (left bar) beside QEM's (right bar); written to ``path`` (PNG)."""
    from lowbit.analysis.plots import pyplot, save_figure

    plt = pyplot()
    figure, ax = plt.subplots(figsize=(max(8.4, 0.5 * len(rows) + 4), 4.4))
    positions = range(len(rows))
    width = 0.38
    for offset, label, clip, projection, colors in (
        (-width / 2, "alpha", [r.clip_mse for r in rows], [r.projection_mse for r in rows],
         ("tab:blue", "lightsteelblue")),
        (width / 2, "QEM", [r.qem_clip_mse for r in rows],
         [r.qem_projection_mse for r in rows], ("tab:orange", "navajowhite")),
    ):
        x = [p + offset for p in positions]
        ax.bar(x, projection, width, color=colors[1], label=f"projection error ({label})")
        ax.bar(x, clip, width, bottom=projection, color=colors[0],
               label=f"clipping error ({label})")
    ax.set_xticks(list(positions))
    ax.set_xticklabels([r.name for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean squared error (Eq. 14)")
    ax.set_title(f"{title}: quantization error, the quantizer's alpha vs QEM")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    return save_figure(plt, figure, path)
