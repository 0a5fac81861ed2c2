"""PNG figures of a model: weight and activation histograms with the quantization levels drawn
(APoT Fig. 2, UniQ Fig. 3, SRQ Fig. 2; any method whose quantizers report their grid, no
integer export needed), clipping ratio against alpha (APoT Fig. 4a); top-1 against bit-width
over a sweep directory; SRQ Fig. 8's gradient bias. A run's learning curves and training
dynamics are drawn by ``lowbit.analysis.run_plots``.

matplotlib is an optional extra (``pip install 'lowbit[plot]'``), imported only when a figure
is drawn. The data behind each figure comes from plain functions (``histogram_panels``,
``clipping_curves``, ``sweep_points``) that do not need it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lowbit.analysis.error import clipping_ratio
from lowbit.errors import LowbitError
from lowbit.export.grids import quantizer_input
from lowbit.export.writer import quantized_layers
from lowbit.quant.hooks import GridReporter, GridView

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_PANELS = 6
CURVE_POINTS = 200


@dataclass(frozen=True)
class Panel:
    """One histogram: ``values`` in units of the quantizer's scale, and its ``levels``."""

    title: str
    values: torch.Tensor
    levels: torch.Tensor


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise LowbitError("plots need matplotlib: pip install 'lowbit[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chosen_layers(model: nn.Module, count: int = MAX_PANELS) -> list[tuple[str, nn.Module]]:
    """Up to ``count`` quantized layers at the model's most common weight bit-width whose
    weight quantizer reports its grid (``lowbit.quant.hooks.GridReporter``), spread evenly
    from first to last (8-bit first / last layers would hide the levels)."""
    layers = [
        (n, m) for n, m in quantized_layers(model)
        if isinstance(m.weight_quantizer, GridReporter)
    ]
    if not layers:
        raise LowbitError("no quantized layer of this model reports its grid; nothing to plot")
    common = Counter(m.weight_quantizer.bits for _, m in layers).most_common(1)[0][0]
    layers = [(n, m) for n, m in layers if m.weight_quantizer.bits == common]
    if len(layers) <= count:
        return layers
    step = (len(layers) - 1) / (count - 1) if count > 1 else 0
    return [layers[round(i * step)] for i in range(count)]


def _panel(title: str, view: GridView | None) -> Panel | None:
    if view is None:
        return None
    return Panel(title, view.units.detach().reshape(-1).float(), view.levels.detach().double())


@torch.no_grad()
def histogram_panels(
    model: nn.Module, sample: torch.Tensor | None = None, count: int = MAX_PANELS
) -> tuple[list[Panel], list[Panel]]:
    """``(weight panels, activation panels)`` of ``chosen_layers``: what each quantizer sees
    in units of its grid (``GridReporter.grid_view``: divided by its scale, per channel when
    kernel-wise) and its levels, for every method whose quantizers report a grid (SRQ Fig. 2,
    UniQ Fig. 3, APoT Fig. 2). Activation panels need a ``sample`` batch (inputs of each
    layer's input quantizer; zeros left out)."""
    layers = chosen_layers(model, count)
    weights = []
    for name, layer in layers:
        quantizer = layer.weight_quantizer
        weight = layer.quantizer_layout(layer.weight).detach().float()
        panel = _panel(f"{name} ({quantizer.bits}-bit)", quantizer.grid_view(weight))
        if panel is not None:
            weights.append(panel)
    activations: list[Panel] = []
    if sample is None:
        return weights, activations
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        layer.input_quantizer.register_forward_pre_hook(
            lambda module, args, name=name: seen.setdefault(name, args[0].detach())
        )
        for name, layer in layers
        if isinstance(layer.input_quantizer, GridReporter)
    ]
    was_training = model.training
    try:
        model.eval()(sample)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for name, layer in layers:
        if name in seen:
            quantizer = layer.input_quantizer
            title = f"{name} input ({quantizer.bits}-bit), nonzero"
            panel = _panel(title, quantizer.grid_view(seen[name].float()))
            if panel is not None:
                # ReLU's exact zeros sit on the zero level and would dwarf the rest
                activations.append(Panel(title, panel.values[panel.values != 0], panel.levels))
    return weights, activations


def clipping_curves(
    model: nn.Module, count: int = MAX_PANELS
) -> list[tuple[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]]:
    """APoT Fig. 4a per chosen layer: clipping ratio against alpha, from 0 to the largest
    magnitude, for the weights and, when the quantizer normalizes them (APoT Eq. 9), for the
    normalized weights on the same alpha axis (their ratio falls far more gently)."""
    curves = []
    for name, layer in chosen_layers(model, count):
        weight = layer.weight.detach().float()
        normalized = quantizer_input(layer.weight_quantizer, weight, output_units=False)
        series = {"weights W": weight}
        if normalized is not weight:
            series["normalized weights (Eq. 9)"] = normalized
        top = max(float(x.abs().max()) for x in series.values())
        alphas = torch.linspace(0, top, CURVE_POINTS, dtype=torch.float64)
        curves.append(
            (name, {label: (alphas, clipping_ratio(x, alphas)) for label, x in series.items()})
        )
    return curves


def sweep_points(sweep_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{"model method": [(bits, top-1), ...]}`` from ``SWEEP_DIR/*/summary.json``; float runs
    (and quantized runs' float pre-training) under ``"model float"`` with bits 32."""
    sweep_dir = Path(sweep_dir)
    summaries = sorted(sweep_dir.glob("*/summary.json"))
    if not summaries:
        raise LowbitError(
            f"{str(sweep_dir)!r} holds no run directories with a summary.json; give a sweep "
            "directory (lowbit sweep --out DIR)"
        )
    points: dict[str, set[tuple[int, float]]] = {}
    for path in summaries:
        summary = json.loads(path.read_text())
        points.setdefault(f"{summary['model']} {summary['method']}", set()).add(
            (int(summary["bits"]), float(summary["top1"]))
        )
        if summary.get("float_top1") is not None:
            points.setdefault(f"{summary['model']} float", set()).add(
                (32, float(summary["float_top1"]))
            )
    return {label: sorted(values) for label, values in sorted(points.items())}


def panel_grid(plt, panels: int, width: float = 4.2, height: float = 3.2):
    columns = min(3, panels)
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows),
                                squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return figure, list(axes.flat)


def save_figure(plt, figure: Figure, path: str | Path) -> Figure:
    """Write ``figure`` to ``path`` (PNG) and close it; returns it (its axes stay readable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return figure


def plot_histograms(panels: list[Panel], path: str | Path, what: str) -> Figure:
    """Histograms of ``panels`` (density), each level a vertical line (APoT Fig. 2, UniQ
    Fig. 3); ``what`` names the values on the x axis (e.g. "weight")."""
    if not panels:
        raise LowbitError(f"no quantized {what}s to plot")
    plt = pyplot()
    figure, axes = panel_grid(plt, len(panels))
    for ax, panel in zip(axes, panels):
        levels = panel.levels.float()
        span = float(levels[-1] - levels[0])
        lo, hi = float(levels[0]) - 0.25 * span, float(levels[-1]) + 0.25 * span
        beyond = float(((panel.values < lo) | (panel.values > hi)).float().mean())
        values = panel.values.clamp(lo, hi).numpy()
        ax.hist(values, bins=120, range=(lo, hi), density=True, color="tab:blue", alpha=0.6,
                label=f"{what}s")
        if beyond > 0:
            ax.text(0.02, 0.95, f"{beyond:.1%} beyond the axis,\ndrawn at its ends",
                    transform=ax.transAxes, fontsize=8, va="top")
        for i, level in enumerate(levels.tolist()):
            ax.axvline(level, color="tab:red", linewidth=0.8, alpha=0.8,
                       label="quantization levels" if i == 0 else None)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(f"{what} / scale (alpha or step)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8, loc="upper right")
    return save_figure(plt, figure, path)


def plot_clipping(curves, path: str | Path) -> Figure:
    """Clipping ratio against alpha (APoT Fig. 4a), one panel per layer."""
    if not curves:
        raise LowbitError("no quantized layers to plot clipping ratios for")
    plt = pyplot()
    figure, axes = panel_grid(plt, len(curves))
    for ax, (name, series) in zip(axes, curves):
        for label, (alphas, ratio) in series.items():
            ax.plot(alphas.numpy(), ratio.numpy(), label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("clipping threshold alpha")
        ax.set_ylabel("clipping ratio")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    return save_figure(plt, figure, path)


def plot_sweep(points: dict[str, list[tuple[int, float]]], path: str | Path) -> Figure:
    """Top-1 against bit-width, one line per model and method; float results as dashed
    horizontal lines."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(6.4, 4.4))
    bits_seen = sorted({b for values in points.values() for b, _ in values if b < 32})
    for label, values in points.items():
        quantized = [(b, top1) for b, top1 in values if b < 32]
        if quantized:
            ax.plot(*zip(*quantized), marker="o", label=label)
        for b, top1 in values:
            if b == 32:
                ax.axhline(top1, linestyle="--", linewidth=1, color="gray",
                           label=f"{label} ({top1:.2f}%)")
    if bits_seen:
        ax.set_xticks(bits_seen)
    ax.set_xlabel("bit-width (weights / activations)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("accuracy vs bit-width")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(plt, figure, path)


def plot_gradient_bias(points, path: str | Path) -> Figure:
    """SRQ Fig. 8 (``lowbit.analysis.gradient_bias``): (a) SRQ vs SRQ + DropBits, (b) SRQ +
    DropBits vs RQ, the bias of each estimator's x gradient against x."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9.6, 3.6))
    pairs = (("SRQ", "SRQ+DropBits"), ("SRQ+DropBits", "RQ"))
    for ax, pair, letter in zip(axes, pairs, "ab"):
        for method in pair:
            mine = sorted((p.x, p.bias) for p in points if p.method == method)
            ax.plot([x for x, _ in mine], [b for _, b in mine], label=method)
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_title(f"({letter}) {pair[0]} vs. {pair[1]}", fontsize=10)
        ax.set_xlabel("the location of x (units of alpha)")
        ax.set_ylabel("gradient bias E[dL/dx] - exact")
        ax.legend(fontsize=8)
    return save_figure(plt, figure, path)


def write_model_figures(
    model: nn.Module, sample: torch.Tensor, out: str | Path, count: int = MAX_PANELS
) -> list[Path]:
    """``weights.png``, ``activations.png`` (when the inputs are quantized) and
    ``clipping.png`` of ``model`` in ``out``, ``sample`` feeding the activations; returns
    their paths."""
    out = Path(out)
    weights, activations = histogram_panels(model, sample, count)
    plot_histograms(weights, out / "weights.png", "weight")
    plot_clipping(clipping_curves(model, count), out / "clipping.png")
    written = [out / "weights.png", out / "clipping.png"]
    if activations:
        plot_histograms(activations, out / "activations.png", "activation")
        written.append(out / "activations.png")
    return written
