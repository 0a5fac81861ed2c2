"""CoQuant joint training over B against one network trained alone per bit-width.

On the embedded digits set with the default small CNN: one float run, then from its checkpoint
(a) one network trained jointly at every bit-width in B (CoQuant Algorithm 1: dynamic teacher,
block swapping) and (b) for each b in B, a network trained alone at b with the same quantizers
(``method=coquant``, ``bits=b``), the same optimizer and the same number of epochs. Prints the
test top-1 of both at each b and ends with the gaps ``alone - joint`` (target: at most 3
points, issue 6).

    python bench/coquant_vs_single.py [--bits 8,6,4,2] [--epochs 15] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from lowbit.train.config import resolve_config
from lowbit.train.run import run_training

TARGET_GAP = 3.0


def train(settings: list[str]) -> dict:
    return run_training(resolve_config(None, settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="8,6,4,2", help="the bit-width set B")
    parser.add_argument("--epochs", type=int, default=15, help="quantized epochs of every run")
    parser.add_argument("--float-epochs", type=int, default=15, help="the shared float run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, e.g. adaptive.teacher=highest")
    parser.add_argument("--out", help="parent of the run directories (default: a temporary one)")
    args = parser.parse_args()
    bits = [int(b) for b in args.bits.split(",")]
    out = Path(args.out or tempfile.mkdtemp(prefix="coquant-vs-single-"))

    common = [f"out={out}", "method=coquant", *args.set]
    float_run = train([*common, f"float_epochs={args.float_epochs}", "epochs=0"])
    start = [*common, f"init={float_run['run_dir']}/float.pt", f"epochs={args.epochs}"]
    joint = train([*start, f"adaptive.bits=[{','.join(map(str, bits))}]"])
    alone = {b: train([*start, f"bits={b}"])["top1"] for b in bits}

    print(f"\nsmall_cnn on digits, {args.epochs} quantized epochs from a {args.float_epochs}-epoch "
          f"float run ({float_run['float_top1']:.2f}%); test top-1:")
    print(f"{'bits':<6}{'joint':>8}{'alone':>8}{'gap':>7}")
    values = {}
    for b in bits:
        joint_top1 = joint["top1_by_bits"][str(b)]
        values[f"gap_{b}bit"] = round(alone[b] - joint_top1, 2)
        print(f"{b:<6}{joint_top1:>7.2f}%{alone[b]:>7.2f}%{values[f'gap_{b}bit']:>7.2f}")
    print(f"runs: {out}")
    targets = {label: TARGET_GAP for label in values}
    print(json.dumps({"bench": "coquant_vs_single", "values": values, "targets": targets}))


if __name__ == "__main__":
    main()
