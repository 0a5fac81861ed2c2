"""DistributedDataParallel under torchrun: 2 CPU processes (gloo), one run directory."""

import json
import subprocess
import sys

import torch

from lowbit.train.checkpoint import load_checkpoint


def test_torchrun_two_processes_train_identical_weights_into_one_run_dir(tmp_path):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "lowbit",
        "train",
        "--out",
        str(tmp_path / "runs"),
        "--set",
        "float_epochs=1",
        "--set",
        "epochs=2",
        "--set",
        "model.options.width=8",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()  # rank 1 wrote nothing of its own
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    # Each rank saw half of every epoch; the run finished only if all ranks' weights were
    # bitwise identical (checked by digest at the end of training).
    assert result.stdout.count("run directory:") == 1
    state = load_checkpoint(run_dir / "last.pt")["model"]
    assert all(torch.isfinite(t.float()).all() for t in state.values())


def test_state_digest_sees_a_single_flipped_bit():
    from torch import nn

    from lowbit.train.distributed import state_digest

    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    before = state_digest(model)
    with torch.no_grad():
        bits = model[0].weight.view(torch.int32)
        bits[0, 0] ^= 1
    assert state_digest(model) != before
