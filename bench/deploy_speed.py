"""Throughput of the exported integer ONNX model relative to the float ONNX model of the same
network, on onnxruntime's CPU provider.

For each shape, ResNet-20 at CIFAR's 3x32x32 and ResNet-18 at ImageNet's 3x224x224, the float
network is exported once with plain ``torch.onnx.export(..., dynamo=False)``; each method
family's representative (``FAMILIES``) is a copy of the same float network quantized with
``lowbit.quantize`` (its defaults, 8-bit first and last layers), calibrated on one random
batch (speed does not depend on the trained values) and exported with
``lowbit.export.onnx.export_onnx`` (ConvInteger / MatMulInteger on int8 / uint8 codes where a
layer allows it). Both run in onnxruntime sessions with the same options: ``--threads``
intra-op threads, one inter-op thread, every graph optimization (BatchNorm folding of the
float graph included). Both read the same random images. For batch 1 and 64, rounds alternate
one float run and one integer run, each of the same number of batches (enough for about
``RUN_SECONDS`` of the float model), so that a change in machine load hits both sides; a
ratio is integer images/s over float images/s, the median over ``--repeats`` rounds (min-max
printed). ``--profile`` prints, for ResNet-18 at batch 64, the share of time per operator
type of each side (onnxruntime's profiler, ``SessionOptions.enable_profiling``): where the
integer graph spends its time when 2x is out of reach.

    python bench/deploy_speed.py [--family apot --family pact] [--bits 4] [--repeats 5]
        [--threads 2] [--profile]

The last line is ``{"bench": "deploy_speed", "values": {LABEL: ratio}, "targets": {LABEL:
2.0}}`` with labels ``FAMILY MODEL bBATCH`` (null for a family whose export failed, with
``"notes"`` saying why) plus ``float MODEL bBATCH images/s``; the target (issue 15) is on
ResNet-18 at batch 64.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

import lowbit
from lowbit.errors import LowbitError
from lowbit.models import build_model
from lowbit.nn.calibrate import calibrate

# name -> (zoo options, classes, input shape)
MODELS = {
    "resnet20": ({}, 10, (3, 32, 32)),
    "resnet18": ({}, 1000, (3, 224, 224)),
}
BATCHES = (1, 64)
# Family -> the method that represents it (the uniform-grid family: uniform, LSQ, UniQ).
FAMILIES = {
    "apot": "apot", "pot": "pot", "uniform": "lsq", "pact": "pact", "dorefa": "dorefa",
    "coquant": "coquant", "srq": "srq",
}
TARGET, TARGET_MODEL, TARGET_BATCH = 2.0, "resnet18", 64  # issue 15
RUN_SECONDS = 0.5
WARMUP = 2
PROFILE_RUNS = 3
TOP_OPS = 6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES),
                        help="method family to measure (repeatable; default: all)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--profile", action="store_true",
                        help=f"per-operator time shares at {TARGET_MODEL}, batch {TARGET_BATCH}")
    return parser.parse_args(argv)


def make_session(path: Path, threads: int, profile_prefix: Path | None = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def seconds(session, images: np.ndarray, iterations: int) -> float:
    feed = {session.get_inputs()[0].name: images}
    start = time.perf_counter()
    for _ in range(iterations):
        session.run(None, feed)
    return time.perf_counter() - start


def export_float(model: nn.Module, sample: torch.Tensor, path: Path) -> Path:
    """The float architecture as the TorchScript exporter writes it (batch size free)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            model, (sample,), str(path), dynamo=False, input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def export_integer(
    float_model: nn.Module, method: str, bits: int, sample: torch.Tensor, path: Path
) -> tuple[Path, dict]:
    """``method`` at ``bits`` over a copy of ``float_model``, calibrated on random data,
    exported by lowbit; returns the file and its metadata (integer and float layers)."""
    from lowbit.export.onnx import export_onnx, read_metadata

    model = lowbit.quantize(copy.deepcopy(float_model), method, bits)
    calibrate(model, [torch.randn_like(sample)], 1)
    export_onnx(model.eval(), path, sample)
    return path, read_metadata(path)


def op_shares(session) -> dict[str, float]:
    """Share of the profiled node time per operator type (onnxruntime's trace events)."""
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and "op_name" in event.get("args", {}):
            totals[event["args"]["op_name"]] += event["dur"]
    whole = sum(totals.values()) or 1.0
    return {op: round(t / whole, 3) for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def profile(float_path: Path, int_path: Path, images: np.ndarray, threads: int,
            folder: Path) -> dict[str, dict[str, float]]:
    shares = {}
    for side, path in (("float", float_path), ("integer", int_path)):
        session = make_session(path, threads, folder / side)
        seconds(session, images, PROFILE_RUNS)
        shares[side] = op_shares(session)
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(shares[side].items())[:TOP_OPS])
        print(f"    profile {side}: {top}", flush=True)
    return shares


def measure(float_session, int_session, images: np.ndarray, repeats: int) -> tuple[list, float]:
    """Per-round ratios (integer over float images/s) and the median float images/s."""
    for session in (float_session, int_session):
        seconds(session, images, WARMUP)
    per_batch = seconds(float_session, images, 1)
    iterations = max(1, math.ceil(RUN_SECONDS / max(per_batch, 1e-6)))
    ratios, float_rates = [], []
    for _ in range(repeats):
        float_time = seconds(float_session, images, iterations)
        int_time = seconds(int_session, images, iterations)
        ratios.append(float_time / int_time)
        float_rates.append(images.shape[0] * iterations / float_time)
    return ratios, statistics.median(float_rates)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        sys.exit("deploy_speed needs onnx and onnxruntime: pip install 'lowbit[onnx]'")
    torch.set_num_threads(args.threads)  # exports and calibration; the sessions set their own
    families = args.family or list(FAMILIES)
    values: dict[str, float | None] = {}
    targets: dict[str, float] = {}
    notes: dict[str, str] = {}
    profiles: dict[str, dict] = {}
    print(f"onnxruntime {onnxruntime.__version__}, {args.threads} intra-op threads, "
          f"{args.bits}-bit, ratio = integer images/s / float images/s (median of "
          f"{args.repeats}, min-max)", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name, (options, classes, shape) in MODELS.items():
            torch.manual_seed(0)
            float_model = build_model(name, num_classes=classes, **options).eval()
            sample = torch.zeros(1, *shape)
            float_path = export_float(float_model, sample, folder / f"{name}-float.onnx")
            float_session = make_session(float_path, args.threads)
            generator = np.random.default_rng(0)
            inputs = {b: generator.standard_normal((b, *shape), dtype=np.float32)
                      for b in BATCHES}
            for family in families:
                labels = [f"{family} {name} b{batch}" for batch in BATCHES]
                if name == TARGET_MODEL and TARGET_BATCH in BATCHES:
                    targets[f"{family} {name} b{TARGET_BATCH}"] = TARGET
                path = folder / f"{name}-{family}.onnx"
                try:
                    _, metadata = export_integer(
                        float_model, FAMILIES[family], args.bits, sample, path
                    )
                except LowbitError as error:
                    notes[f"{family} {name}"] = f"not exported: {error}"
                    values.update(dict.fromkeys(labels))
                    print(f"  {family:<8} {name:<9} not exported: {error}", flush=True)
                    continue
                floats = metadata["float_layers"]
                layers = (f"{len(metadata['integer_layers'])} integer layers, float: "
                          + (", ".join(f"{k} ({v})" for k, v in floats.items()) or "none"))
                int_session = make_session(path, args.threads)
                for batch, label in zip(BATCHES, labels):
                    ratios, float_rate = measure(
                        float_session, int_session, inputs[batch], args.repeats
                    )
                    values[label] = round(statistics.median(ratios), 3)
                    values[f"float {name} b{batch} images/s"] = round(float_rate, 1)
                    print(f"  {family:<8} {name:<9} batch {batch:<3} {values[label]:6.2f} "
                          f"({min(ratios):.2f}-{max(ratios):.2f})  float {float_rate:8.1f} "
                          f"images/s", flush=True)
                    if args.profile and (name, batch) == (TARGET_MODEL, TARGET_BATCH):
                        profiles[family] = profile(
                            float_path, path, inputs[batch], args.threads, folder
                        )
                print(f"  {family:<8} {name:<9} {layers}", flush=True)
    result = {"bench": "deploy_speed", "values": values, "targets": targets}
    if notes:
        result["notes"] = notes
    if profiles:
        result["profile"] = profiles
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
