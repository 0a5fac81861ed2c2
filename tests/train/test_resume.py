"""Interrupted runs resume exactly; checkpoints survive a kill during their write."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from lowbit.train.checkpoint import load_checkpoint, save_checkpoint

ARGS = ["--set", "float_epochs=3", "--set", "epochs=4", "--set", "model.options.width=16"]


def train(*args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "lowbit", "train", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_mid_run_then_resume_is_bitwise_equal(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    assert train(*ARGS, cwd=straight).wait(timeout=300) == 0

    process = train(*ARGS, cwd=killed)
    deadline = time.time() + 300
    metrics = None
    while time.time() < deadline and process.poll() is None:
        found = (
            list((killed / "runs").glob("*/metrics.jsonl")) if (killed / "runs").exists() else []
        )
        if found and len(found[0].read_text().splitlines()) >= 4:  # inside the quantized stage
            metrics = found[0]
            break
        time.sleep(0.01)
    assert metrics is not None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    run_dir = metrics.parent
    resumed = subprocess.run(
        [sys.executable, "-m", "lowbit", "train", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr

    (straight_dir,) = (straight / "runs").iterdir()
    expected = load_checkpoint(straight_dir / "last.pt")["model"]
    actual = load_checkpoint(run_dir / "last.pt")["model"]
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["top1"] == json.loads((straight_dir / "summary.json").read_text())["top1"]


def test_kill_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    script = (
        "import torch, sys\n"
        "from lowbit.train.checkpoint import save_checkpoint\n"
        f"save_checkpoint({str(path)!r}, {{'model': {{'w': torch.zeros(50_000_000)}}}})\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".last.pt.*")):
        time.sleep(0.005)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_checkpoints_load_with_weights_only(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(2)}, "config": {"bits": 4}})
    assert torch.load(tmp_path / "c.pt", weights_only=True)["config"]["bits"] == 4
