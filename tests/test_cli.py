"""The command line as a user runs it: a subprocess, exit codes, one-line errors."""

import json
import subprocess
import sys

from lowbit.train.metrics import epoch_records, read_metrics


def lowbit(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "lowbit", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_default_train_reaches_float_accuracy_at_4_bits(tmp_path):
    """Issue acceptance: `lowbit train` with no arguments; APoT 4-bit within 2 points of float."""
    result = lowbit("train", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "apot 4-bit" in result.stdout and "float" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "apot" and summary["bits"] == 4
    assert summary["top1"] >= summary["float_top1"] - 2.0
    assert summary["float_top1"] > 90
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "float.pt"):
        assert (run_dir / name).is_file()
    epochs = epoch_records(read_metrics(run_dir))  # metrics.jsonl also has sampled steps
    assert len(epochs) == 30 and epochs[-1]["stage"] == "quant"


def test_methods_lists_registry():
    result = lowbit("methods")
    assert result.returncode == 0 and "apot" in result.stdout


def test_diagnose_prints_the_fig6_table():
    result = lowbit("diagnose", "--bits", "3", "--samples", "2000")
    assert result.returncode == 0, result.stderr
    assert "error:SRQ" in result.stdout and "-3.5" in result.stdout


def test_unknown_option_is_rejected():
    assert lowbit("train", "--bogus").returncode == 2
