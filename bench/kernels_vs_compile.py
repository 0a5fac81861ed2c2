"""Each fused CPU kernel against ``torch.compile`` of the formula it replaces (issue 14).

Every quantizer op with a CPU kernel (``lowbit.quant.native``) has a device-generic default
formula, which is what runs without a C compiler and on other devices. This bench times, on
the same input, the op as users call it (its CPU kernel), the formula compiled by inductor
(C++/OpenMP on the CPU) and the formula in eager mode; each figure is the median over rounds
that time the three back to back, so machine load hits them alike. Issue 14's rule: a kernel
is deleted when compile comes within 5% of it (``compiled/kernel <= 1.05``), and kept only
where compile cannot reach it. The input is a ResNet-20 first-stage activation at batch 128
(128 x 16 x 32 x 32 float32, 8 MiB); backward ops get an upstream gradient of that shape.

    python bench/kernels_vs_compile.py [--rounds 20] [--threads 2]

The last line is JSON: ``values`` holds ``OP compiled/kernel`` and ``OP eager/kernel``;
``targets`` holds, for each op, the 1.05 that compile would have to beat to delete its kernel
(a kernel is kept while its ``compiled/kernel`` stays above it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

from lowbit.quant import native
from lowbit.quant.apot import rcf_formula, rcf_op
from lowbit.quant.levels import levels as make_levels
from lowbit.quant.pact import pact_formula, pact_op
from lowbit.quant.project import grid_cells, grid_table
from lowbit.quant.rq import rq_backward, rq_backward_formula, rq_formula, rq_quantize
from lowbit.quant.srq import srq_backward, srq_backward_formula, srq_formula, srq_quantize
from lowbit.quant.ste import clip_backward_formula, clip_backward_op
from lowbit.quant.uniq import learned_step_formula, learned_step_op

SHAPE = (128, 16, 32, 32)
KEEP_ABOVE = 1.05  # compiled/kernel above this keeps the kernel

Case = tuple[str, Callable, Callable, tuple]


def cases() -> list[Case]:
    """``(name, op, formula, arguments)``: the op dispatches to its CPU kernel."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=generator) * 0.5
    grad = torch.randn(SHAPE, generator=generator)
    step, alpha, sigma = torch.tensor(0.1), torch.tensor(1.5), torch.tensor(0.1 / 3)
    exact = make_levels("apot", 4, False)  # float64: the grid is found exactly
    levels, table = exact.float(), grid_table(exact, grid_cells(exact)).float()
    out = learned_step_formula(x, step, 0.0, 15.0, False, 1.0)
    seed = torch.tensor(12345)
    runs = [0, 15, -1]  # one run of grid points, no DropBits mask
    k = torch.floor(x / step + 0.5).clamp_(0, 15).to(torch.int8)
    return [
        ("learned_step_quantize (LSQ/UniQ, 4-bit unsigned)", learned_step_op,
         learned_step_formula, (x, step, 0.0, 15.0, False, 1.0)),
        ("pact_quantize (4-bit unsigned)", pact_op, pact_formula, (x, alpha, 4, False, "pact")),
        ("rcf_quantize (APoT 4-bit unsigned)", rcf_op, rcf_formula,
         (x, alpha, levels, table, False, False, True)),
        ("clip_backward (rounding rule)", clip_backward_op, clip_backward_formula,
         (grad, x, out, step * 0, step * 15, False, step, "rounding")),
        ("srq_quantize (4-bit unsigned)", srq_quantize, srq_formula,
         (x, step, sigma, None, runs)),
        ("srq_backward (4-bit unsigned)", srq_backward, srq_backward_formula,
         (grad, x, k, step, sigma, None, runs, False)),
        ("rq_quantize (4-bit unsigned)", rq_quantize, rq_formula,
         (x, step, sigma, 0, 15, 1.0, 3.0, seed)),
        ("rq_backward (4-bit unsigned)", rq_backward, rq_backward_formula,
         (grad, x, step, sigma, 0, 15, 1.0, 3.0, seed)),
    ]


def seconds(function: Callable, arguments: tuple) -> float:
    start = time.perf_counter()
    function(*arguments)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if native.library() is None:
        raise SystemExit("kernels_vs_compile: the CPU kernels did not build (no C compiler?)")
    values, targets = {}, {}
    print(f"input {SHAPE} float32, {args.threads} threads; medians of {args.rounds} rounds, ms")
    print(f"  {'op':52} {'kernel':>8} {'compiled':>9} {'eager':>8} {'comp/kern':>10}  kernel")
    for name, op, formula, arguments in cases():
        start = time.perf_counter()
        compiled = torch.compile(formula, dynamic=False)
        sides = {"kernel": op, "compiled": compiled, "eager": formula}
        for side in sides.values():  # warm-up; compiles
            side(*arguments)
        compile_seconds = time.perf_counter() - start
        times: dict[str, list[float]] = {label: [] for label in sides}
        for _ in range(args.rounds):
            for label, side in sides.items():
                times[label].append(seconds(side, arguments))
        medians = {label: statistics.median(ts) * 1e3 for label, ts in times.items()}
        over_compiled = medians["compiled"] / medians["kernel"]
        over_eager = medians["eager"] / medians["kernel"]
        short = name.split(" ")[0]
        values[f"{short} compiled/kernel"] = round(over_compiled, 3)
        values[f"{short} eager/kernel"] = round(over_eager, 3)
        targets[f"{short} compiled/kernel"] = KEEP_ABOVE
        verdict = "kept" if over_compiled > KEEP_ABOVE else "compile matches: delete"
        print(f"  {name:52} {medians['kernel']:8.2f} {medians['compiled']:9.2f} "
              f"{medians['eager']:8.2f} {over_compiled:10.2f}  {verdict} "
              f"(compile {compile_seconds:.0f} s)")
    print(json.dumps({"bench": "kernels_vs_compile", "values": values, "targets": targets}))


if __name__ == "__main__":
    main()
