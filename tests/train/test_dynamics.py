"""Training dynamics (issue 16 item 7): every quantizer's state sampled into metrics.jsonl
(and TensorBoard), under resume without duplicated or lost steps, and `lowbit plot RUN`."""

from __future__ import annotations

import copy
import json
import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit
from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.quant.hooks import GridView
from lowbit.train import dynamics as dynamics_module
from lowbit.train.config import resolve_config
from lowbit.train.dynamics import DynamicsSampler, grid_statistics, sampling_interval
from lowbit.train.metrics import epoch_records, read_metrics, step_records, trim_to_checkpoint
from lowbit.train.run import resume, run_training
from lowbit.train.run_config import RunConfig

PNG = b"\x89PNG\r\n\x1a\n"
# The acceptance run: the embedded digits, 3 epochs (1 float + 2 quantized), sampled every
# other step.
SHORT = [
    "float_epochs=1", "epochs=2", "data.limit=400", "data.eval_limit=100",
    "model.options.width=8", "data.workers=0", "dynamics_every=2",
]


def test_grid_statistics_follow_their_definitions():
    """Clipping ratio = fraction beyond the end levels; near_level = fraction of the nonzero
    in-range values within 0.1 of a gap from their nearest level; SQNR (UniQ Table 1 / Fig. 4)
    = 10 log10(Var[x] / mean((x - Q(x))^2)), Q the nearest level of the clipped value (a tie
    to the lower one), all in the quantizer's domain (units times scale)."""
    units = torch.tensor([-2.5, -0.95, 0.04, 0.5, 1.0, 3.0, 0.0])
    levels = torch.tensor([-1.0, 0.0, 1.0])
    scale = torch.tensor(2.0)
    stats = grid_statistics(units * scale, GridView(units, levels, scale), histogram=True)
    assert float(stats["clipping_ratio"]) == pytest.approx(2 / 7)
    assert float(stats["near_level"]) == pytest.approx(3 / 4)  # -0.95, 0.04, 1.0 of 4
    x = [v * 2 for v in (-2.5, -0.95, 0.04, 0.5, 1.0, 3.0, 0.0)]
    x_hat = [v * 2 for v in (-1, -1, 0, 0, 1, 1, 0)]
    mean = sum(x) / len(x)
    variance = sum((v - mean) ** 2 for v in x) / len(x)
    mse = sum((a - b) ** 2 for a, b in zip(x, x_hat)) / len(x)
    assert float(stats["sqnr_db"]) == pytest.approx(10 * math.log10(variance / mse), rel=1e-5)
    assert float(stats["input_std"]) == pytest.approx(math.sqrt(variance), rel=1e-5)
    low, high = stats["histogram_range"]
    width = (high - low) / dynamics_module.HISTOGRAM_BINS
    assert float(stats["histogram"].sum()) * width == pytest.approx(1.0)  # a density


def test_sampling_interval_and_its_validation():
    # About DYNAMICS_SAMPLES (20) samples a stage, never fewer steps apart than one.
    assert sampling_interval(None, 15) == 1 and sampling_interval(None, 1000) == 50
    assert sampling_interval(7, 1000) == 7 and sampling_interval(0, 1000) == 0
    for bad in ("-1", "2.5", "often"):
        with pytest.raises(LowbitError, match="dynamics_every"):
            RunConfig.parse(resolve_config(None, [f"dynamics_every={bad}"]))


def _tiny(method: str, **options) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 3),
    )
    return lowbit.quantize(model, method, 3, first_last_bits=None, **options)


@pytest.mark.parametrize("method", ["apot", "uniq", "rq", "srq-dropbits"])
def test_sampling_reads_every_quantizer_and_changes_nothing(method):
    """Two copies train 4 steps alike, one sampled every step: bitwise equal weights (no
    random draws, no state changed: RQ's noise and DropBits' masks included), and each
    sample holds the method's learned state and its tensors' statistics."""
    options = {"weight_options": {"l0_lambda": 1e-3}} if method == "srq-dropbits" else {}
    plain = _tiny(method, **options)
    sampled = copy.deepcopy(plain)
    batches = [(torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))) for _ in range(4)]
    records = []
    sampler = DynamicsSampler(sampled, 1, records.append, {"stage": "quant"})
    for model in (plain, sampled):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        torch.manual_seed(1)
        for step, (images, labels) in enumerate(batches):
            watching = model is sampled
            with sampler.watch() if watching else nullcontext():
                loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if watching:
                sampler.record(step, 1, loss, 0.05)
    for (name, a), (_, b) in zip(plain.state_dict().items(), sampled.state_dict().items()):
        assert torch.equal(a, b), name
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    stats = records[-1]["quantizers"]
    weight, inputs = stats["2.weight_quantizer"], stats["2.input_quantizer"]
    scale = {"apot": "alpha", "uniq": "step", "rq": "alpha", "srq-dropbits": "alpha"}[method]
    assert scale in weight and scale in inputs
    for entry in (weight, inputs):
        assert {"input_std", "sqnr_db", "clipping_ratio", "near_level"} <= set(entry)
        assert 0 <= entry["clipping_ratio"] <= 1 and 0 <= entry["near_level"] <= 1
    assert len(weight["histogram"]) == dynamics_module.HISTOGRAM_BINS
    if method == "rq":
        assert weight["temperature"] == 1.0
    if method == "srq-dropbits":
        masks = stats["2.weight_quantizer.masks"]
        assert len(masks["keep_probability"]) == 2 and masks["learned_bits"] in (3.0, 2.0)
    json.dumps(records)  # plain JSON values


def test_trim_to_checkpoint_keeps_what_the_checkpoint_saw(tmp_path):
    records = [
        {"kind": "epoch", "stage": "float", "epoch": 1},
        {"kind": "step", "stage": "quant", "epoch": 1, "step": 0},
        {"kind": "epoch", "stage": "quant", "epoch": 1},
        {"kind": "step", "stage": "quant", "epoch": 2, "step": 4},  # epoch 2 was cut short
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    trim_to_checkpoint(tmp_path, "quant", 1)
    assert read_metrics(tmp_path) == records[:3]
    trim_to_checkpoint(tmp_path, "float", 1)  # the float stage's last.pt: no quantized record
    assert read_metrics(tmp_path) == records[:1]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dynamics")
    summary = run_training(resolve_config(None, [*SHORT, f"out={out}"]))
    return Path(summary["run_dir"])


def test_a_run_samples_its_quantized_stage_into_metrics(short_run):
    records = read_metrics(short_run)
    epochs, steps = epoch_records(records), step_records(records)
    assert [(r["stage"], r["epoch"]) for r in epochs] == [("float", 1), ("quant", 1),
                                                          ("quant", 2)]
    per_epoch = epochs[-1]["step"] // 2
    assert [r["step"] for r in steps] == list(range(0, 2 * per_epoch, 2))
    assert all(r["stage"] == "quant" for r in steps)  # a float model has no quantizer
    # APoT (the default method): every sample has each quantized layer's alpha and SQNR
    for record in steps:
        weights = [v for k, v in record["quantizers"].items() if k.endswith("weight_quantizer")]
        assert any("alpha" in v and "sqnr_db" in v for v in weights)


def _labelled(figure) -> bool:
    visible = [ax for ax in figure.axes if ax.get_visible()]
    return bool(visible) and all(ax.get_xlabel() and ax.get_ylabel() for ax in visible)


def test_plot_run_writes_the_dynamics_pngs_with_labelled_axes(short_run, tmp_path, capsys,
                                                              monkeypatch):
    """Acceptance: `lowbit plot RUN` writes learning curves, UniQ Fig. 4 / APoT Fig. 4b-5
    dynamics and the checkpoint's histograms, each a real image with labelled axes."""
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    from lowbit.analysis import plots

    figures = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure",
                        lambda plt, fig, path: figures.append(save(plt, fig, path)) or fig)
    assert main(["plot", str(short_run), "-o", str(tmp_path)]) == 0
    names = {"learning_curves.png", "dynamics_scales.png", "dynamics_clipping.png",
             "weight_distributions.png", "weights.png", "clipping.png"}
    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 20_000, name
    assert capsys.readouterr().out.count("wrote") == len(figures) >= len(names)
    assert all(_labelled(figure) for figure in figures)
    scales = next(f for f in figures
                  if any(ax.get_ylabel() == "std of the quantizer input" for ax in f.axes))
    assert any(len(line.get_xdata()) > 2 for ax in scales.axes for line in ax.lines)


def test_tensorboard_event_files_when_the_extra_is_installed(short_run):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(short_run / "tensorboard" / "quant")).Reload()
    tags = events.Tags()["scalars"]
    assert "step/loss" in tags and "epoch/top1" in tags
    steps = [e.step for e in events.Scalars("step/loss")]
    assert steps == [r["step"] for r in step_records(read_metrics(short_run))]


def test_a_resumed_run_logs_every_sampled_step_once(tmp_path, monkeypatch):
    """A run that fails in its second quantized epoch, after sampling part of it, resumes
    from the first: the partial epoch's samples are dropped and sampled again."""
    calls = []
    record = DynamicsSampler.record

    def failing_record(self, step, epoch, *args):
        calls.append(epoch)
        if calls.count(2) == 2:  # two samples into quantized epoch 2
            raise RuntimeError("stopped mid-epoch")
        return record(self, step, epoch, *args)

    monkeypatch.setattr(DynamicsSampler, "record", failing_record)
    settings = [*SHORT, "float_epochs=0", "data.limit=260", f"out={tmp_path}"]
    with pytest.raises(RuntimeError, match="mid-epoch"):
        run_training(resolve_config(None, settings))
    (run_dir,) = tmp_path.iterdir()
    assert any(r["epoch"] == 2 for r in step_records(read_metrics(run_dir)))
    monkeypatch.setattr(DynamicsSampler, "record", record)
    resume(run_dir)
    steps = [r["step"] for r in step_records(read_metrics(run_dir))]
    per_epoch = epoch_records(read_metrics(run_dir))[-1]["step"] // 2
    assert steps == list(range(0, 2 * per_epoch, 2))

