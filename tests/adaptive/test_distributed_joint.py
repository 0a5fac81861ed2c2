"""Joint training under torchrun: DDP wraps the whole joint step (one forward per backward), and
both processes end with bitwise identical weights and BatchNorm statistics."""

import json
import subprocess
import sys


def test_torchrun_two_processes_train_one_adaptive_network(tmp_path):
    settings = ["float_epochs=0", "epochs=1", "model.options.width=8", "data.limit=256",
                "method=coquant", "adaptive.bits=[8,4,2]"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "lowbit", "train", "--out", str(tmp_path), *(f"--set={s}" for s in settings)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    # The run ends only if the ranks' state digests agree (run.py); a swapped-out BatchNorm
    # without gradient would have stopped DDP.
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and set(summary["top1_by_bits"]) == {"8", "4", "2"}
