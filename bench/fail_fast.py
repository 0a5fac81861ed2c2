"""How long a mistake costs: seconds from `lowbit train` with a bad setting to its one-line
error, relative to the seconds `lowbit methods` takes in the same run (Python, torch and
lowbit starting, listing the methods: the floor of any command).

Every case is a default run (15 float epochs, then 15 quantized) with one mistake that only
the quantized stage, or a later step, would meet; before the checks (issue 13) each trained
the float stage first. Each command runs as a user runs it, a subprocess, interleaved with the
baseline; a figure is the median of the per-pair ratios.

    python bench/fail_fast.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "quantizer_option_typo": ["--set", "weight_options.alpah=3"],
    "unknown_optimizer": ["--set", "optimizer.name=sgdd"],
    "override_of_no_layer": ["--set", "overrides.layer9=4"],
    "model_option_typo": ["--set", "model.options.shorcut=conv"],
    "lr_not_a_number": ["--set", "optimizer.lr=fast"],
}
TARGET_SECONDS = 10.0  # the bound on any bad input
TARGET_RATIO = 3.0  # the checks cost at most twice the start-up they follow


def seconds(arguments: list[str], cwd: str, expect: int) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "lowbit", *arguments], cwd=cwd, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if result.returncode != expect:
        raise SystemExit(f"{arguments}: exit {result.returncode}, expected {expect}\n"
                         f"{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    values, targets = {}, {}
    with tempfile.TemporaryDirectory() as cwd:
        print(f"{'case':<24}{'error s':>9}{'methods s':>11}{'ratio':>8}")
        for name, arguments in CASES.items():
            pairs = [
                (seconds(["train", *arguments], cwd, 2), seconds(["methods"], cwd, 0))
                for _ in range(args.repeats)
            ]
            ratio = statistics.median(error / floor for error, floor in pairs)
            error = statistics.median(error for error, _ in pairs)
            floor = statistics.median(floor for _, floor in pairs)
            print(f"{name:<24}{error:>9.2f}{floor:>11.2f}{ratio:>8.2f}")
            values[f"{name}_seconds"], targets[f"{name}_seconds"] = round(error, 2), TARGET_SECONDS
            values[f"{name}_ratio"], targets[f"{name}_ratio"] = round(ratio, 2), TARGET_RATIO
        assert not any(Path(cwd).iterdir()), "a failed run left files behind"
    print(json.dumps({"bench": "fail_fast", "values": values, "targets": targets}))


if __name__ == "__main__":
    main()
