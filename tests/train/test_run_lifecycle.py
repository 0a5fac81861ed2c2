"""What a run says while it trains and what it leaves when it stops: progress in log files,
--quiet, Ctrl-C with the real resume command, failed runs, the validation split, and the
knobs for short runs (max_steps, eval_limit)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lowbit.train import progress as progress_module
from lowbit.train import stage as stage_module
from lowbit.train.checkpoint import load_checkpoint
from lowbit.train.config import resolve_config
from lowbit.train.metrics import epoch_records, read_metrics
from lowbit.train.progress import Progress
from lowbit.train.run import run_training

SHORT = ["--set", "model.options.width=8", "--set", "data.limit=400"]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lowbit", "train", *args]


def test_off_a_terminal_progress_is_one_log_line_per_interval(monkeypatch, caplog):
    """The default interval (10 s) with a fake clock: a line at 10, 20 and 30 s of a 35 s
    epoch, each with the running loss, the lr and images/s since the last line."""
    assert progress_module.LOG_INTERVAL_SECONDS <= 30
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    caplog.set_level(logging.INFO, logger="lowbit")
    report = Progress(range(35), "quant epoch 1/3", total=35)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for step in report:  # one step per second, 32 images each, loss 2.0 each
        loss_sum += 2.0 * 32
        report.update(step, 32 * (step + 1), loss_sum, lr=0.05)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0] == "quant epoch 1/3  step 10/35  loss 2.0000  lr 0.05  images/s 32"
    assert [re.search(r"step (\d+)/", line).group(1) for line in lines] == ["10", "20", "30"]


def test_a_run_piped_to_a_file_logs_progress_lines(tmp_path):
    """Acceptance: stderr into a file (no terminal) gets progress lines with loss and images/s
    while it trains, never 30 s apart; the run directory is named at the start."""
    log = tmp_path / "train.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            _command("--set", "float_epochs=0", "--set", "epochs=4",
                     "--set", "progress_seconds=0.05"),
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr,
        )
        assert process.wait(timeout=300) == 0, log.read_text()
    lines = log.read_text().splitlines()
    assert "run directory: runs/" in lines[0]
    progress = [line for line in lines if " step " in line]
    assert progress and all("loss " in line and "images/s " in line for line in progress)
    stamps = [time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) for line in lines]
    assert max(b - a for a, b in zip(stamps, stamps[1:])) < 30


def test_quiet_prints_only_the_result(tmp_path):
    result = subprocess.run(
        _command(*SHORT, "--quiet", "--set", "float_epochs=1", "--set", "epochs=1"),
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and result.stderr == ""
    assert "run directory: runs/" in result.stdout


def _interrupt_after(
    tmp_path: Path, lines_in_metrics: int, *settings: str
) -> subprocess.CompletedProcess:
    """Start a long run, Ctrl-C it once ``metrics.jsonl`` has that many lines (0: as soon as
    its directory exists, before the first checkpoint)."""
    process = subprocess.Popen(
        _command(*SHORT, "--set", "float_epochs=2", "--set", "epochs=200", *settings),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell without job control starts background jobs with Ctrl-C ignored, and a
        # child inherits that: give the run the default, as on a user's terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        runs = list((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []
        metrics = runs[0] / "metrics.jsonl" if runs else None
        written = metrics.read_text().splitlines() if metrics and metrics.exists() else []
        if runs and len(written) >= lines_in_metrics:
            break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGINT)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"the run did not stop after Ctrl-C:\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_ctrl_c_prints_the_real_resume_command_which_finishes_the_run(tmp_path):
    result = _interrupt_after(tmp_path, lines_in_metrics=3)
    assert result.returncode == 130, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"lowbit: interrupted (resume with: lowbit train --resume runs/{run_dir.name})"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stage"] == "quant"
    # The printed command, with fewer epochs so that it ends soon (only here: the config).
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["epochs"] = 3
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    command = last.split("resume with: ")[1].rstrip(")").split()
    resumed = subprocess.run(
        [sys.executable, "-m", "lowbit", *command[1:]], cwd=tmp_path, capture_output=True,
        text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_ctrl_c_before_the_first_checkpoint_leaves_nothing(tmp_path):
    # One image per step: the first epoch lasts seconds, far longer than Ctrl-C takes.
    result = _interrupt_after(tmp_path, 0, "--set", "data.batch_size=1")
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "lowbit: interrupted before the first checkpoint"
    )
    assert list((tmp_path / "runs").iterdir()) == []


def _config(tmp_path: Path, *settings: str) -> dict:
    return resolve_config(None, [
        f"out={tmp_path / 'runs'}", "model.options.width=8", "data.limit=300",
        "float_epochs=1", "epochs=2", *settings,
    ])


def _fail_on_call(monkeypatch, failing_call: int) -> None:
    real, calls = stage_module.train_one_epoch, []

    def train_one_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == failing_call:
            raise RuntimeError("CUDA out of memory\n(two lines)")
        return real(*args, **kwargs)

    monkeypatch.setattr(stage_module, "train_one_epoch", train_one_epoch)


def test_a_run_failing_before_its_first_checkpoint_leaves_nothing(tmp_path, monkeypatch):
    _fail_on_call(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        run_training(_config(tmp_path))
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_run_failing_later_is_marked_failed(tmp_path, monkeypatch):
    _fail_on_call(monkeypatch, 2)  # the float epoch is saved; the first quantized one fails
    with pytest.raises(RuntimeError):
        run_training(_config(tmp_path))
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["stage"] == "quant" and summary["epochs_done"] == 0
    assert summary["error"] == "RuntimeError: CUDA out of memory (two lines)"
    assert summary["resume"] == f"lowbit train --resume {run_dir}"
    assert (run_dir / "last.pt").is_file()


def _metrics(run_dir: Path) -> list[dict]:
    return epoch_records(read_metrics(run_dir))


def test_best_checkpoint_is_chosen_on_the_validation_split(tmp_path):
    summary = run_training(_config(tmp_path, "epochs=4", "data.val_fraction=0.2"))
    run_dir = Path(summary["run_dir"])
    quant = [m for m in _metrics(run_dir) if m["stage"] == "quant"]
    assert all("val_top1" in m and "top1" in m for m in quant)
    best = load_checkpoint(run_dir / "best.pt")["metrics"]
    assert best["val_top1"] == max(m["val_top1"] for m in quant)
    chosen = next(m for m in quant if m["val_top1"] == best["val_top1"])
    assert best["top1"] == chosen["top1"]  # the test top-1 of that epoch, reported only
    assert summary["val_size"] == 60  # 20% of data.limit=300, carved from the training set
    assert summary["top1"] == quant[-1]["top1"]


def test_without_a_validation_split_best_is_the_last_epoch(tmp_path):
    summary = run_training(_config(tmp_path, "data.val_fraction=0"))
    run_dir = Path(summary["run_dir"])
    best, last = (load_checkpoint(run_dir / name) for name in ("best.pt", "last.pt"))
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert summary["val_top1"] is None and summary["val_size"] == 0


def test_max_steps_and_eval_limit_shorten_a_run(tmp_path):
    summary = run_training(_config(tmp_path, "max_steps=3", "data.eval_limit=50"))
    run_dir = Path(summary["run_dir"])
    for name in ("float.pt", "last.pt"):  # the step count of each stage's schedule
        assert load_checkpoint(run_dir / name)["scheduler"]["last_epoch"] == 3
    assert all(m["n"] == 50 and m["val_n"] == 30 for m in _metrics(run_dir))
