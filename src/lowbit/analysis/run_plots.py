"""A run's learning curves and training dynamics as PNG figures (``lowbit plot RUN``), from
its ``metrics.jsonl`` (``lowbit.train.metrics``; the dynamics are sampled by
``lowbit.train.dynamics``):

* ``learning_curves.png``: loss and top-1 against epochs, the float pre-training then the
  quantized stage on one axis (the reproducibility report's Figs. 2-5; over a sweep, one
  line per run: SRQ Fig. 7);
* ``dynamics_scales.png``: each quantizer's alpha or step, the std of its input and the SQNR
  of its output over training (UniQ Fig. 4), weights and layer inputs side by side;
* ``dynamics_clipping.png``: clipping ratio and the fraction of values near a level over
  training, the first three layers (APoT Fig. 4b; SRQ Fig. 2's clustering as a number);
* ``weight_distributions.png``: the density of the first three layers' weights in grid
  units at five points of training, dashed at their mean (APoT Fig. 5b);
* ``bit_widths.png`` (DropBits): each mask's keep probability and each layer's bit-width
  over training;
* from the run's ``best.pt`` (else ``last.pt``): ``weights.png``, ``activations.png`` and
  ``clipping.png`` (``lowbit.analysis.plots``).

Which quantizers are drawn: those of the method's own kind (the most common set of reported
statistics, so the 8-bit first and last layers of APoT, quantized another way, stay out),
spread evenly over the network, at most ``MAX_LINES``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lowbit.analysis import plots
from lowbit.errors import LowbitError
from lowbit.train.metrics import epoch_records, read_metrics, step_records
from lowbit.train.stage import STAGES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_LINES = 6
FIRST_LAYERS = 3  # APoT Fig. 4b and 5 follow the first three layers
SNAPSHOTS = 5  # APoT Fig. 5: the density at this many points of training
ROLES = {"weight_quantizer": "weights", "input_quantizer": "layer inputs"}
# What a quantizer learns that scales its grid, in the order looked for.
SCALES = ("alpha", "step")


@dataclass(frozen=True)
class RunHistory:
    """One run's records: ``label`` names it in a legend."""

    label: str
    epochs: list[dict[str, Any]]
    steps: list[dict[str, Any]]

    def stage_start(self) -> dict[str, float]:
        """The epoch at which each stage starts on the shared axis (float first)."""
        starts, total = {}, 0.0
        for stage in STAGES:
            starts[stage] = total
            total += max((r["epoch"] for r in self.epochs if r["stage"] == stage), default=0)
        return starts

    def step_epochs(self, records: list[dict[str, Any]]) -> list[float]:
        """The position of sampled ``records`` on the epoch axis: the stage's start plus the
        step over the stage's steps per epoch, read from its epoch records (a stage stopped
        in its first epoch: its sampled steps span one epoch)."""
        starts = self.stage_start()
        per_epoch = {r["stage"]: r["step"] / r["epoch"] for r in self.epochs if r.get("step")}
        for record in records:
            per_epoch.setdefault(record["stage"], 1 + max(
                r["step"] for r in records if r["stage"] == record["stage"]))
        return [starts[r["stage"]] + r["step"] / per_epoch[r["stage"]] for r in records]


def read_history(run_dir: str | Path) -> RunHistory:
    """The records of ``run_dir``, labelled by its model, method and bits."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    label = run_dir.name
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        config = yaml.safe_load(config_path.read_text())
        quantized = any(r["stage"] == "quant" for r in records)
        bits = config.get("bits")
        what = f"{config['method']} {bits}-bit" if quantized and bits else "float"
        label = f"{config['model']['name']} {what}"
    return RunHistory(label, epoch_records(records), step_records(records))


def _spread(names: list[str], count: int) -> list[str]:
    if len(names) <= count:
        return names
    step = (len(names) - 1) / (count - 1)
    return [names[round(i * step)] for i in range(count)]


def quantizer_names(history: RunHistory, role: str) -> list[str]:
    """Names of the ``role`` quantizers (``weight_quantizer`` / ``input_quantizer``) of the
    method's own kind, in network order (see the module docstring)."""
    if not history.steps:
        return []
    last = history.steps[-1]["quantizers"]  # the first may precede steps set from data
    names = [name for name in last if name.rsplit(".", 1)[-1] == role]
    kinds = Counter(frozenset(last[name]) for name in names)
    if not kinds:
        return []
    common = kinds.most_common(1)[0][0]
    return [name for name in names if frozenset(last[name]) == common]


def series(history: RunHistory, name: str, key: str) -> tuple[list[float], list[Any]]:
    """``(epoch positions, values)`` of statistic ``key`` of quantizer ``name``."""
    records = [r for r in history.steps if key in r["quantizers"].get(name, {})]
    return history.step_epochs(records), [r["quantizers"][name][key] for r in records]


def _layer(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _mark_stages(ax, history: RunHistory) -> None:
    start = history.stage_start()["quant"]
    if start > 0 and any(r["stage"] == "quant" for r in history.epochs):
        ax.axvline(start, color="gray", linestyle="--", linewidth=0.8)


def _epoch_label(histories: list[RunHistory]) -> str:
    has_float = any(r["stage"] == "float" for h in histories for r in h.epochs)
    return "epoch (float pre-training, then quantized)" if has_float else "epoch"


def plot_learning_curves(histories: list[RunHistory], path: str | Path) -> Figure:
    """Loss and top-1 against epochs; one run: training, validation and test curves and
    the sampled steps' loss; several runs: each run's training loss and test top-1."""
    if not any(h.epochs for h in histories):
        raise LowbitError("no finished epoch to draw learning curves from")
    plt = plots.pyplot()
    figure, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(11, 4))
    alone = len(histories) == 1
    for history in histories:
        starts = history.stage_start()
        x = [starts[r["stage"]] + r["epoch"] for r in history.epochs]
        prefix = "" if alone else f"{history.label}: "
        if alone and history.steps:
            loss_ax.plot(history.step_epochs(history.steps), [r["loss"] for r in history.steps],
                         linewidth=0.8, alpha=0.6, label="sampled steps")
        loss_ax.plot(x, [r["train_loss"] for r in history.epochs], marker=".",
                     label=f"{prefix}training (epoch mean)")
        curves = (("train_top1", "training"), ("val_top1", "validation"), ("top1", "test"))
        for key, what in curves if alone else curves[2:]:
            points = [(p, r[key]) for p, r in zip(x, history.epochs) if key in r]
            if points:
                top1_ax.plot(*zip(*points), marker=".", label=f"{prefix}{what}")
        _mark_stages(loss_ax, history)
        _mark_stages(top1_ax, history)
    for ax, what in ((loss_ax, "loss"), (top1_ax, "top-1 accuracy (%)")):
        ax.set_xlabel(_epoch_label(histories))
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    loss_ax.set_title("training loss", fontsize=10)
    top1_ax.set_title("top-1", fontsize=10)
    return plots.save_figure(plt, figure, path)


def _scale_key(history: RunHistory, name: str) -> str | None:
    stats = history.steps[-1]["quantizers"].get(name, {})
    return next((key for key in SCALES if key in stats), None)


def plot_scales(history: RunHistory, path: str | Path) -> Figure:
    """UniQ Fig. 4 for every drawn quantizer: its scale (alpha or step), the std of its input
    and the SQNR of its output over training; a column for weights, one for layer inputs."""
    roles = [role for role in ROLES if quantizer_names(history, role)]
    if not roles:
        raise LowbitError("the run sampled no quantizer statistics (dynamics_every=0?)")
    plt = plots.pyplot()
    rows = (("scale", "alpha or step size"), ("input_std", "std of the quantizer input"),
            ("sqnr_db", "SQNR (dB)"))
    figure, axes = plt.subplots(len(rows), len(roles), figsize=(6 * len(roles), 8.4),
                                squeeze=False)
    for column, role in enumerate(roles):
        names = _spread(quantizer_names(history, role), MAX_LINES)
        for row, (key, label) in enumerate(rows):
            ax = axes[row][column]
            for name in names:
                stat = _scale_key(history, name) if key == "scale" else key
                if stat is not None:
                    ax.plot(*series(history, name, stat), label=_layer(name))
            ax.set_title(f"{ROLES[role]}: {label}", fontsize=10)
            ax.set_xlabel(_epoch_label([history]))
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    return plots.save_figure(plt, figure, path)


def plot_clipping_dynamics(history: RunHistory, path: str | Path) -> Figure:
    """APoT Fig. 4b: the clipping ratio over training of the first three layers' quantizers
    (at their learned alpha or step), and the fraction of values near a level."""
    roles = [role for role in ROLES if quantizer_names(history, role)]
    if not roles:
        raise LowbitError("the run sampled no quantizer statistics (dynamics_every=0?)")
    plt = plots.pyplot()
    rows = (("clipping_ratio", "clipping ratio"),
            ("near_level", "fraction near a level"))
    figure, axes = plt.subplots(len(rows), len(roles), figsize=(6 * len(roles), 6),
                                squeeze=False)
    for column, role in enumerate(roles):
        names = quantizer_names(history, role)[:FIRST_LAYERS]
        for row, (key, label) in enumerate(rows):
            ax = axes[row][column]
            for name in names:
                ax.plot(*series(history, name, key), label=_layer(name))
            ax.set_title(f"{ROLES[role]}, first layers: {label}", fontsize=10)
            ax.set_xlabel(_epoch_label([history]))
            ax.set_ylabel(label)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    return plots.save_figure(plt, figure, path)


def plot_weight_distributions(history: RunHistory, path: str | Path) -> Figure:
    """APoT Fig. 5b: the density of each of the first three layers' weights in grid units
    (normalized by Eq. 9 and divided by alpha for APoT) at ``SNAPSHOTS`` points of training,
    each dashed at its mean."""
    names = [n for n in quantizer_names(history, "weight_quantizer")[:FIRST_LAYERS]
             if series(history, n, "histogram")[1]]
    if not names:
        raise LowbitError("the run sampled no weight histograms (dynamics_every=0?)")
    plt = plots.pyplot()
    figure, axes = plots.panel_grid(plt, len(names))
    colors = plt.get_cmap("viridis")
    for ax, name in zip(axes, names):
        positions, densities = series(history, name, "histogram")
        _, ranges = series(history, name, "histogram_range")
        picks = _spread(list(range(len(densities))), SNAPSHOTS)
        for n, i in enumerate(picks):
            low, high = ranges[i]
            width = (high - low) / len(densities[i])
            centres = [low + (j + 0.5) * width for j in range(len(densities[i]))]
            color = colors(n / max(len(picks) - 1, 1))
            ax.plot(centres, densities[i], color=color, label=f"epoch {positions[i]:.2f}")
            mean = sum(c * d * width for c, d in zip(centres, densities[i]))
            ax.axvline(mean, color=color, linestyle="--", linewidth=0.8)
        ax.set_title(_layer(name), fontsize=10)
        ax.set_xlabel("weight in grid units (weight / scale)")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    return plots.save_figure(plt, figure, path)


def masked_names(history: RunHistory) -> list[str]:
    """Quantizer parts that report DropBits keep probabilities, in network order."""
    if not history.steps:
        return []
    return [n for n, s in history.steps[-1]["quantizers"].items() if "keep_probability" in s]


def plot_bit_widths(history: RunHistory, path: str | Path) -> Figure:
    """DropBits (SRQ §3.5, Table 3): every layer's bit-width over training (ternary drawn at
    log2(3)), then each drawn layer's keep probability Pi per mask."""
    names = masked_names(history)
    if not names:
        raise LowbitError("the run has no DropBits masks to draw")
    shown = _spread(names, MAX_LINES - 1)
    plt = plots.pyplot()
    figure, axes = plots.panel_grid(plt, 1 + len(shown))
    for name in names:
        axes[0].plot(*series(history, name, "learned_bits"), label=name.split(".weight")[0])
    axes[0].set_title("bit-width evaluation would use", fontsize=10)
    axes[0].set_ylabel("bits (ternary = log2 3)")
    for ax, name in zip(axes[1:], shown):
        positions, keep = series(history, name, "keep_probability")
        for mask in range(len(keep[0]) if keep else 0):
            ax.plot(positions, [k[mask] for k in keep], label=f"mask {mask}")
        ax.axhline(0.5, color="gray", linestyle="--", linewidth=0.8)
        ax.set_title(f"{name.split('.weight')[0]}: keep probability", fontsize=10)
        ax.set_ylabel("keep probability Pi")
        ax.set_ylim(-0.02, 1.02)
    for ax in axes[: 1 + len(shown)]:
        ax.set_xlabel(_epoch_label([history]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return plots.save_figure(plt, figure, path)


def write_run_figures(run_dir: str | Path, out: str | Path, layers: int) -> list[Path]:
    """Every figure of the module docstring that ``run_dir`` has the data for, in ``out``;
    returns their paths."""
    from lowbit.analysis.report import load_model, sample_input
    from lowbit.nn.calibrate import calibrate

    run_dir, out = Path(run_dir), Path(out)
    history = read_history(run_dir)
    written = []

    def draw(plot, name: str) -> None:
        plot(history, out / name)
        written.append(out / name)

    plot_learning_curves([history], out / "learning_curves.png")
    written.append(out / "learning_curves.png")
    if quantizer_names(history, "weight_quantizer") or quantizer_names(history, "input_quantizer"):
        draw(plot_scales, "dynamics_scales.png")
        draw(plot_clipping_dynamics, "dynamics_clipping.png")
    if any(series(history, n, "histogram")[1]
           for n in quantizer_names(history, "weight_quantizer")):
        draw(plot_weight_distributions, "weight_distributions.png")
    if masked_names(history):
        draw(plot_bit_widths, "bit_widths.png")
    checkpoint = next((run_dir / n for n in ("best.pt", "last.pt") if (run_dir / n).is_file()),
                      None)
    if checkpoint is not None and any(r["stage"] == "quant" for r in history.epochs):
        model, info = load_model(str(checkpoint))
        sample = sample_input(model, info, None, batch=8).normal_()
        calibrate(model, [sample], 1)
        written += plots.write_model_figures(model, sample, out, layers)
    return written


def write_sweep_figures(sweep_dir: str | Path, out: str | Path) -> list[Path]:
    """``accuracy.png`` (top-1 against bits) and, over the runs with metrics,
    ``learning_curves.png`` (one line per run: SRQ Fig. 7, the report's Figs. 2-5)."""
    sweep_dir, out = Path(sweep_dir), Path(out)
    plots.plot_sweep(plots.sweep_points(sweep_dir), out / "accuracy.png")
    written = [out / "accuracy.png"]
    histories = [read_history(p.parent) for p in sorted(sweep_dir.glob("*/metrics.jsonl"))]
    if any(h.epochs for h in histories):
        plot_learning_curves([h for h in histories if h.epochs], out / "learning_curves.png")
        written.append(out / "learning_curves.png")
    return written
