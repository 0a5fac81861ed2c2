"""Each paper's method through the CLI on the embedded digits set."""

import json
import subprocess
import sys


def train(tmp_path, *sets):
    args = [sys.executable, "-m", "lowbit", "train", "--out", str(tmp_path)]
    for value in sets:
        args += ["--set", value]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = tmp_path.iterdir()
    return json.loads((run_dir / "summary.json").read_text()), run_dir


def test_uniq_1bit_trains_well_above_chance_with_warmup(tmp_path):
    """UniQ §5: binary weights and activations, Adam, 5-epoch constant warm-up (preset)."""
    summary, run_dir = train(tmp_path, "method=uniq", "bits=1")
    config = (run_dir / "config.yaml").read_text()
    assert "warmup_lr: 0.001" in config and "name: adam" in config
    assert summary["bits"] == 1 and summary["top1"] > 80  # chance is 10%


def test_uniq_and_lsq_at_2_bits_run(tmp_path):
    for method in ("uniq", "lsq"):
        summary, _ = train(
            tmp_path / method, f"method={method}", "bits=2", "float_epochs=2", "epochs=1"
        )
        assert summary["method"] == method and summary["bits"] == 2


def test_learned_bit_widths_are_reported_per_layer(tmp_path):
    """SRQ §3.5: a DropBits run with the L0 regularizer reports the bits each layer kept."""
    summary, _ = train(
        tmp_path,
        "method=srq-dropbits",
        "bits=3",
        "weight_options.l0_lambda=0.01",
        "float_epochs=2",
        "epochs=2",
        "model.options.width=8",
    )
    learned = summary["learned_bits"]
    assert set(learned) == {"0", "3", "7", "10", "15"}
    assert all(value == "T" or 2 <= int(value) <= 8 for value in learned.values())
