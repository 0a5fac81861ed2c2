"""Joint training through the shared trainer (lowbit train with adaptive.bits), per-bit metrics,
and `lowbit eval CKPT --bits 2,...,8` on the checkpoint it writes."""

import json

import pytest

from lowbit.adaptive.evaluation import relative_accuracy
from lowbit.cli import main
from lowbit.train.config import resolve_config
from lowbit.train.metrics import epoch_records, read_metrics
from lowbit.train.run import run_training

TINY = ["model.options.width=8", "data.limit=256", "float_epochs=0", "epochs=1"]


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    settings = [*TINY, "method=coquant", "adaptive.bits=[8,4]", "adaptive.bn_calibration_batches=2",
                f"out={out}"]
    return run_training(resolve_config(None, settings))


def test_metrics_and_summary_hold_top1_at_every_trained_bit_width(adaptive_run):
    summary = adaptive_run
    assert summary["bits"] == [8, 4] and set(summary["top1_by_bits"]) == {"8", "4"}
    mean = sum(summary["top1_by_bits"].values()) / 2
    assert summary["top1"] == pytest.approx(mean)
    record = epoch_records(read_metrics(summary["run_dir"]))[0]
    assert set(record["top1_by_bits"]) == {"8", "4"}


def test_one_checkpoint_evaluates_at_2_to_8_bits_marking_zero_shot(adaptive_run, capsys):
    checkpoint = f"{adaptive_run['run_dir']}/last.pt"
    assert main(["eval", checkpoint, "--bits", "2,3,4,5,6,7,8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line.endswith(("%", "*"))}
    assert list(rows) == [f"{b}-bit" for b in (8, 7, 6, 5, 4, 3, 2)]
    zero_shot = {name for name, line in rows.items() if "zero-shot" in line}
    assert zero_shot == {f"{b}-bit" for b in (7, 6, 5, 3, 2)}
    assert "recalibrated on 2 training batches" in lines[-1]


def test_eval_bits_errors_are_one_line(adaptive_run, tmp_path, capsys):
    checkpoint = f"{adaptive_run['run_dir']}/last.pt"
    for bits in ("2,9", "1", "8,x", ""):
        assert main(["eval", checkpoint, "--bits", bits]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    single = run_training(resolve_config(None, [*TINY, "method=coquant", "bits=4",
                                                 f"out={tmp_path}"]))
    assert main(["eval", f"{single['run_dir']}/last.pt", "--bits", "4"]) == 2
    assert "adaptive.bits" in capsys.readouterr().err


def test_eval_prints_delta_b_against_networks_trained_alone(adaptive_run, tmp_path, capsys):
    """Delta_B (our reading of the supplement's §4, lowbit.adaptive.evaluation): the mean over
    B of top-1 / the top-1 of a network trained at that bit-width alone, in %."""
    checkpoint = f"{adaptive_run['run_dir']}/last.pt"
    alone = tmp_path / "alone-4bit"
    alone.mkdir()
    (alone / "summary.json").write_text(json.dumps({"top1": 50.0}))
    individual = f"8=80,4={alone}"
    assert main(["eval", checkpoint, "--bits", "8,4", "--individual", individual, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    top1 = {row["bits"]: row["top1"] for row in result["rows"]}
    assert result["delta_b"] == pytest.approx(100 * (top1[8] / 80 + top1[4] / 50) / 2)
    assert main(["eval", checkpoint, "--bits", "8,4", "--individual", individual]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith(f"Delta_B = {result['delta_b']:.1f}%")
    assert any(line.startswith("4-bit") and line.rstrip().endswith("50.00%") for line in lines)
    for mistake in ("8=80", "8=80,4=nowhere", "8:80,4=50", "8=0,4=50"):
        assert main(["eval", checkpoint, "--bits", "8,4", "--individual", mistake]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert main(["eval", checkpoint, "--individual", "8=80,4=50"]) == 2


def test_delta_b_is_the_mean_ratio_over_the_trained_bit_widths():
    rows = [{"bits": 8, "top1": 99.0}, {"bits": 6, "top1": 10.0}, {"bits": 4, "top1": 96.0}]
    assert relative_accuracy(rows, (8, 4), {8: 100.0, 4: 96.0}) == pytest.approx(99.5)
