"""The command line as a user runs it: a subprocess, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest


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
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 30 and json.loads(lines[-1])["stage"] == "quant"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "method=nope"], "unknown method 'nope'"),
        (["--set", "bits=9"], "supports 2..8 bits"),
        (["--set", "first_last_bits=1"], "first_last_bits"),
        (["--set", "epoch=3"], "unknown config key 'epoch'"),
        (["missing.yaml"], "does not exist"),
        (["--set", "model.name=nope"], "unknown model"),
        (["--set", "data.name=nope"], "unknown data set"),
    ],
)
def test_bad_input_prints_one_line_and_exits_nonzero(tmp_path, args, message):
    result = lowbit(
        "train", "--out", str(tmp_path), "--set", "float_epochs=0", "--set", "epochs=1", *args
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_methods_lists_registry():
    result = lowbit("methods")
    assert result.returncode == 0 and "apot" in result.stdout


def test_diagnose_prints_the_fig6_table():
    result = lowbit("diagnose", "--bits", "3", "--samples", "2000")
    assert result.returncode == 0, result.stderr
    assert "error:SRQ" in result.stdout and "-3.5" in result.stdout


def test_unknown_option_is_rejected():
    assert lowbit("train", "--bogus").returncode == 2


@pytest.mark.parametrize(
    "setting, message",
    [
        ("optimizer.lr=fast", "optimizer.lr must be a number, got 'fast'"),
        ("optimizer.lr=.nan", "optimizer.lr must be a number"),
        ("float_lr=-0.1", "float_lr must be > 0"),
        ("data.limit=-5", "data.limit must be >= 1"),
        ("data.batch_size=0", "data.batch_size must be >= 1"),
        ("epochs=-1", "epochs must be >= 0"),
        ("weight_options.alpah=3", "weight_options of layer 3 (method apot)"),
        ("input_options.alpha=-1", "alpha must be a positive number"),
        ("optimizer.name=sgdd", "unknown optimizer 'sgdd'"),
        ("overrides.layer9=4", "matches no quantizable layer"),
    ],
)
def test_bad_values_fail_before_the_float_stage(tmp_path, setting, message):
    """A bad value of a later stage fails in seconds, in one line, before the 15-epoch float
    stage trains and before a run directory exists: numbers are checked first, then every
    stage's model, quantizers and optimizer are built on the meta device."""
    result = lowbit("train", "--out", str(tmp_path / "runs"), "--set", setting)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
