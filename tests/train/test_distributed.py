"""DistributedDataParallel under torchrun: 2 CPU processes (gloo), one run directory."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from lowbit.train.checkpoint import load_checkpoint
from lowbit.train.metrics import read_metrics, step_records

FAMILIES_WORKER = Path(__file__).with_name("ddp_families.py")
# What training must move in each run of ddp_families.RUNS (suffixes of parameter names).
MOVED = {
    "apot": ("weight_quantizer.alpha", "input_quantizer.alpha"),
    "uniq": ("weight_quantizer.step", "input_quantizer.step"),
    "uniq-lazy": ("weight_quantizer.step", "input_quantizer.step"),
    "lsq": ("weight_quantizer.step", "input_quantizer.step"),
    "lsq-lazy": ("weight_quantizer.step", "input_quantizer.step"),
    "pact": ("input_quantizer.alpha",),
    "rq": ("quantizer.alpha", "quantizer.sigma"),
    "srq-dropbits": ("quantizer.alpha", "quantizer.sigma", "masks.logits"),
}
PER_CHANNEL_RUNS = ("uniq", "uniq-lazy", "lsq", "lsq-lazy")
OUT_CHANNELS = {"0": 4, "2": 6, "3": 5, "7": 10}  # of ddp_families.tiny_model's layers


def test_torchrun_two_processes_train_identical_weights_into_one_run_dir(tmp_path):
    # UniQ: kernel-wise weight steps, and input steps set from data (calibrate_batches 0:
    # under DDP the run calibrates one batch before the wrap, or each rank's steps differ).
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
        "--set",
        "method=uniq",
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
    # Rank 0 alone samples the training dynamics: each sampled step once, in order.
    steps = [r["step"] for r in step_records(read_metrics(run_dir)) if r["stage"] == "quant"]
    assert steps and steps == sorted(set(steps))


def test_state_digest_sees_a_single_flipped_bit():
    from torch import nn

    from lowbit.train.distributed import state_digest

    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    before = state_digest(model)
    with torch.no_grad():
        bits = model[0].weight.view(torch.int32)
        bits[0, 0] ^= 1
    assert state_digest(model) != before


def test_torchrun_trains_every_quantizer_family_identically(tmp_path):
    """One torchrun launch trains each family (APoT, UniQ, LSQ, PACT, RQ, SRQ + DropBits) a
    few steps under DDP, each rank on its own batches: the ranks end bitwise equal; training
    moved the quantizer parameters; they are the tensors DDP wrapped, with the shapes
    quantize() gave them before any data (per-channel steps one per output channel). A step
    resized from data after the wrap ("-lazy" runs) fails here, or stops DDP."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(FAMILIES_WORKER), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert set(ranks[0]) == set(ranks[1]) == set(MOVED)
    for name, suffixes in MOVED.items():
        first, second = ranks[0][name], ranks[1][name]
        assert first["ranks_agree"] and first["digest"] == second["digest"], name
        for run in (first, second):
            assert run["same_objects"], name
            assert run["built"] == run["wrapped"] == run["final"], name
            for suffix in suffixes:
                assert any(moved.endswith(suffix) for moved in run["moved"]), (name, suffix)
        if name in PER_CHANNEL_RUNS:
            steps = {key.split(".")[0]: shape for key, shape in first["built"].items()
                     if key.endswith("weight_quantizer.step")}
            assert steps == {layer: [c] for layer, c in OUT_CHANNELS.items()}, name
