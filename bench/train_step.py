"""Cost of one training step of each configuration relative to one float training step,
eager and under ``torch.compile``.

ResNet-20 at CIFAR shape (3x32x32, 10 classes), batch 128, SGD with momentum over every
parameter (the quantizers' alphas and step sizes included; lr 0, see ``make_step``); a step
is the trainer's: the quantizers' progress hook, forward, loss plus the quantizers'
regularization (``QuantizerHooks``), backward and optimizer step. Models are quantized as
users quantize them, ``lowbit.quantize(model, method, bits)`` with its defaults (8-bit first
and last layers). Like the ``lowbit`` command, the process keeps freed memory for reuse
(``lowbit.allocator``).

Columns, each the median over ``--repeats`` rounds of a per-round ratio (min-max printed):

- eager: the configuration's eager step over the eager float step.
- compiled: the step with the model wrapped as ``lowbit train`` does with ``compile: true``
  (``torch.compile(model)``, default inductor backend: C++/OpenMP kernels on a CPU, Triton on
  a GPU; loss, hooks and the optimizer step stay eager) over the float model's step compiled
  the same way.
- compiled/eager: the compiled quantized step over the eager quantized step (below 1: compile
  pays off).
- best: the smaller of eager and compiled, what a user choosing ``compile`` well gets (eager
  when the configuration fails to compile).

Configurations run one after the other. Each one's round times float eager, config eager,
float compiled, config compiled, back to back, so that a change in machine load hits both
sides of every ratio. Before the rounds, warm-up absorbs the allocator, data-initialized step
sizes and compilation: a compiled step is called until two calls in a row compile nothing
(data-initialized quantizers recompile once their scales are set); the seconds of the calls
that compiled are printed as the compile time, with the graphs, graph breaks and frames left
eager that dynamo met on the way (the first call's data initialization included). Dynamo's
caches are reset between configurations, so each is compiled as in a process of its own (the
float model recompiles, mostly from the on-disk caches). After the rounds, one more step of
each side runs under the profiler, which counts the compiled regions it runs (dynamo's
"Torch-Compiled Region" marks): one for a forward in one graph, more with graph breaks, none
when the model has fallen back to eager. A configuration that fails to compile gets null
compiled values and a note; a step with more compiled regions than the float one or with
none, a compile that never settles, or a recompile during the timed rounds are printed and
go to the JSON line's ``notes`` (present only then), and the compiled figures are still
timed, as users would run them. Compile times depend on the on-disk caches of inductor
(``torch.compile`` keeps them between processes): on a busy 2-core CPU, apot:4 compiled in
about 3 minutes cold and 20 s in a later run.

A configuration is ``METHOD:BITS``: one bit-width (``apot:4``) or, for a method that can
switch, a bit-width set trained jointly (``coquant:8,6,4,2``: CoQuant Algorithm 1 with dynamic
teacher selection and block swapping, one step = every bit-width's forward and backward). The
joint step has the eager column only: the trainer refuses ``compile`` with adaptive training
(``lowbit.train.checks``). By default: every registered method at 2 and 4 bits (``maxscale``
is the APoT authors' first/last-layer rule, not a method of its own) and CoQuant over
{8, 6, 4, 2}.

    python bench/train_step.py [--config apot:4 --config coquant:8,6,4,2] [--repeats 7]
        [--no-compile | --compile-only] [--backend inductor] [--device cpu|cuda]
        [--channels-last] [--threads N]

``--device cuda`` puts model, data and optimizer on the GPU and synchronizes before reading
the clock; ``--channels-last`` converts the float and quantized models to NHWC as the trainer's
``channels_last: true`` does (off by default); ``--threads`` sets PyTorch's CPU threads
(default: PyTorch's). The last line is ``{"bench": "train_step", "values": {LABEL: ratio},
"targets": {LABEL: bound}}`` (plus ``"notes": {LABEL: text}`` when there are notes), labels
``CONFIG`` (eager), ``CONFIG compiled``, ``CONFIG compiled/eager`` and ``CONFIG best``, null
where the compile failed; targets sit only on labels that were measured (the best-of and
compiled/eager targets need both columns).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import torch
import torch._dynamo
import torch.nn.functional as F
from torch._dynamo.utils import counters

import lowbit
from lowbit.adaptive import AdaptiveSettings, JointObjective, make_adaptive
from lowbit.allocator import reuse_freed_memory
from lowbit.models import build_model
from lowbit.nn.calibrate import calibrate
from lowbit.quant.registry import available_methods, get_method
from lowbit.train.hooks import QuantizerHooks

MODEL, MODEL_OPTIONS = "resnet20", {}
BATCH, CLASSES, SHAPE = 128, 10, (3, 32, 32)
DEFAULT_BITS = (2, 4)
NOT_A_METHOD = {"maxscale"}  # a first/last-layer rule (APoT authors' code)
# Issue 14: for the elementwise methods at 2 and 4 bits, the better of eager and compiled at
# most 1.20 float steps, and compiling never slower than eager by more than 5%; SRQ <= 1.4,
# SRQ+DropBits <= 1.6, RQ <= 3.0 (best of the two). Issue 6: one joint CoQuant step over
# B = {8, 6, 4, 2} at most 4.4 float steps (eager; it does not compile). Issue 8: other
# single bit-widths (CoQuant's) at most 1.25 eager.
FAST_METHODS = {"apot", "pot", "uniform", "uniq", "lsq", "pact", "dorefa"}
FAST_BITS = {2, 4}
BEST_TARGET, COMPILED_OVER_EAGER_TARGET = 1.20, 1.05
METHOD_TARGETS = {"srq": 1.4, "srq-dropbits": 1.6, "rq": 3.0}
SET_TARGETS = {"coquant:8,6,4,2": 4.4}
EAGER_TARGET = 1.25
PROGRESS = 0.5  # the training fraction every timed step reports to annealing and schedules
EAGER_WARMUP = 2
COMPILE_WARMUP = 8  # calls at most until two in a row compile nothing
REGION = "Torch-Compiled Region"  # dynamo's profiler label of a compiled frame's run
JOINT_NOTE = ("eager only: joint CoQuant training does not compile (the trainer refuses "
              "compile: true with adaptive)")

Step = Callable[[torch.Tensor, torch.Tensor], None]


def default_configs() -> list[str]:
    configs = []
    for name in available_methods():
        if name in NOT_A_METHOD:
            continue
        method = get_method(name)
        configs += [f"{name}:{b}" for b in DEFAULT_BITS if method.min_bits <= b <= method.max_bits]
    if "coquant" in available_methods():
        configs.append("coquant:8,6,4,2")
    return configs


def parse(config: str) -> tuple[str, list[int]]:
    method, _, bits = config.partition(":")
    return method, [int(b) for b in bits.split(",")]


def compilable(config: str) -> bool:
    """Joint (several bit-width) training runs eager only, as in the trainer."""
    return len(parse(config)[1]) == 1


def targets_of(config: str) -> dict[str, float]:
    """Issue 14's (and the earlier issues') bounds for ``config``, keyed by label."""
    if config in SET_TARGETS:
        return {config: SET_TARGETS[config]}
    method, bits = parse(config)
    if len(bits) > 1:
        return {}
    if method in FAST_METHODS:
        if bits[0] not in FAST_BITS:
            return {}
        return {f"{config} best": BEST_TARGET,
                f"{config} compiled/eager": COMPILED_OVER_EAGER_TARGET}
    if method in METHOD_TARGETS:
        return {f"{config} best": METHOD_TARGETS[method]}
    return {config: EAGER_TARGET}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(config: str | None, device: torch.device, compile_backend: str | None = None,
              channels_last: bool = False) -> Step:
    """A closure doing one training step of ``config`` (``None``: the float model), its model
    wrapped by ``torch.compile(model, backend=compile_backend)`` unless that is ``None``."""
    torch.manual_seed(0)
    model = build_model(MODEL, num_classes=CLASSES, **MODEL_OPTIONS).to(device)
    objective = None
    if config is not None:
        method, bits = parse(config)
        if len(bits) == 1:
            lowbit.quantize(model, method, bits[0])
        else:
            make_adaptive(model, bits, method)
            objective = JointObjective(model, AdaptiveSettings(bits=tuple(bits)))
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # lr 0: the optimizer does all its work, but every repeat times the same model (at a real
    # lr, repeated steps on one batch drive RQ's sigma of the 8-bit layers through zero).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    if compile_backend is not None:  # lowbit train sets data-initialized scales before compiling
        calibrate(model, [torch.randn(BATCH, *SHAPE, device=device)], 1)
    # As run_stage and train_one_epoch do: the compiled wrapper is what the steps call and
    # what the hooks are collected from (on the float model they find nothing, cost nothing).
    trained = model if compile_backend is None else torch.compile(model, backend=compile_backend)
    hooks = QuantizerHooks(trained)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        hooks.set_progress(PROGRESS)
        if objective is None:
            loss = F.cross_entropy(trained(images), labels)
        else:
            loss, _ = objective(images, labels, PROGRESS)
        loss = loss + hooks.regularization_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def seconds(step: Step, images: torch.Tensor, labels: torch.Tensor) -> float:
    synchronize(images.device)
    start = time.perf_counter()
    step(images, labels)
    synchronize(images.device)
    return time.perf_counter() - start


def frames_compiled() -> int:
    """Frames dynamo has compiled (or tried to) since the last ``counters.clear()``."""
    return counters["frames"]["total"]


def compile_warm_up(step: Step, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, bool]:
    """Call ``step`` until two calls in a row compile nothing (at most ``COMPILE_WARMUP``
    calls): the seconds of the calls that compiled, and whether compilation settled."""
    spent, quiet = 0.0, 0
    for _ in range(COMPILE_WARMUP):
        before = frames_compiled()
        took = seconds(step, images, labels)
        if frames_compiled() != before:
            spent, quiet = spent + took, 0
        else:
            quiet += 1
            if quiet == 2:
                return spent, True
    return spent, False


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line if len(line) <= 240 else line[:237] + "..."


def compiled_regions(step: Step, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Compiled regions one call of ``step`` runs (dynamo marks each run in the profiler): 1
    for a forward in one graph, more with graph breaks, 0 when it all runs eager."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        step(images, labels)
    return sum(1 for event in profile.events() if event.name.startswith(REGION))


class Compiled:
    """One configuration's compiled side: warmed up and checked, or the reason it is not."""

    def __init__(self, config: str, float_step: Step, args, images, labels) -> None:
        self.step: Step | None = None
        self.error: str | None = None
        self.notes: list[str] = []
        self.float_step = float_step
        self.seconds = self.float_seconds = 0.0
        torch._dynamo.reset()  # as in a process of its own
        counters.clear()
        try:
            self.float_seconds, _ = compile_warm_up(float_step, images, labels)
        except Exception as error:  # noqa: BLE001 - reported, the run goes on
            self.error = f"the float model does not compile: {first_line(error)}"
            return
        counters.clear()
        try:
            step = make_step(config, images.device, args.backend, args.channels_last)
            self.seconds, settled = compile_warm_up(step, images, labels)
        except Exception as error:  # noqa: BLE001
            self.error = f"does not compile: {first_line(error)}"
            torch._dynamo.reset()
            return
        self.step = step
        # What dynamo met on the way, the first call's data initialization included (it reads
        # values on the host): graphs, graph breaks, frames it gave up on (left eager).
        graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
        given_up = counters["frames"]["total"] - counters["frames"]["ok"]
        reasons = sorted({(reason.strip().splitlines() or ["?"])[0]
                          for reason in counters["unimplemented"]})
        self.warm_up = (f"warm-up: {graphs} graph{'s' if graphs != 1 else ''}, {breaks} graph "
                        f"breaks, {given_up} frames left eager"
                        + (f" ({'; '.join(reasons)})" if reasons else ""))
        if not settled:
            self.notes.append(f"still recompiling after {COMPILE_WARMUP} warm-up calls")
        self.frames = frames_compiled()

    def check(self, images: torch.Tensor, labels: torch.Tensor) -> str:
        """After the timed rounds: note a recompile during them (their figures include it)
        and count the compiled regions one more step of each side runs, noting a step broken
        into more regions than the float one, or none (eager); returns a summary."""
        if frames_compiled() != self.frames:
            self.notes.append(f"recompiled {frames_compiled() - self.frames} times while timed")
        base = compiled_regions(self.float_step, images, labels)
        regions = compiled_regions(self.step, images, labels)
        if base == 0:  # the profiler does not show regions in this PyTorch: no check
            return "compiled regions not visible in the profiler, steady state not checked"
        if regions == 0:
            self.notes.append("a step runs no compiled region after warm-up: the compiled "
                              "figures are eager ones")
        elif regions > base:
            self.notes.append(f"a step runs {regions} compiled regions (float {base}): graph "
                              "breaks after warm-up")
        return f"a step runs {regions} compiled region{'s' if regions != 1 else ''} (float {base})"


def fail(message: str) -> None:
    print(f"train_step: {message}", file=sys.stderr)
    raise SystemExit(2)


def resolve_device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        fail(f"unknown device {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {text}: CUDA is not available (PyTorch {torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        fail(f"--device {text}: this bench runs on cpu or cuda")
    return device


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--config", action="append", help="METHOD:BITS (repeatable)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's)")
    columns = parser.add_mutually_exclusive_group()
    columns.add_argument("--no-compile", action="store_true", help="the eager column only")
    columns.add_argument("--compile-only", action="store_true", help="the compiled column only")
    parser.add_argument("--backend", default="inductor",
                        help="torch.compile backend (default inductor, as the trainer)")
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC models, as the trainer's channels_last: true")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    for config in args.config or []:
        method, _, bits = config.partition(":")
        if not bits or not all(b.strip().isdigit() for b in bits.split(",")):
            parser.error(f"--config {config!r}: expected METHOD:BITS, e.g. apot:4")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    reuse_freed_memory()  # as the lowbit command does, for both sides
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = args.config or default_configs()
    eager, compiled = not args.compile_only, not args.no_compile

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, *SHAPE, generator=generator).to(device)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=generator).to(device)
    float_eager = make_step(None, device, None, args.channels_last) if eager else None
    float_compiled = make_step(None, device, args.backend, args.channels_last) if compiled else None
    for _ in range(EAGER_WARMUP if eager else 0):
        float_eager(images, labels)

    columns = (["eager"] if eager else []) + (["compiled", "compiled/eager"] if compiled else [])
    print(f"{MODEL}, batch {BATCH}, {device}, {torch.get_num_threads()} threads, columns: "
          f"{', '.join(columns)}" + (f" (backend {args.backend})" if compiled else ""),
          flush=True)
    ratios: dict[str, dict[str, list[float]]] = {}
    float_times: dict[str, list[float]] = {"eager": [], "compiled": []}
    compile_seconds: dict[str, float] = {}
    notes: dict[str, str] = {}
    for config in configs:
        if not eager and not compilable(config):
            print(f"  {config}: skipped under --compile-only ({JOINT_NOTE})", flush=True)
            continue
        rounds: list[tuple[str, Step, str, Step]] = []  # (column, float step, side, step)
        if eager:
            step = make_step(config, device, None, args.channels_last)
            for _ in range(EAGER_WARMUP):
                step(images, labels)
            rounds.append(("eager", float_eager, "eager", step))
        side = None
        if compiled and compilable(config):
            side = Compiled(config, float_compiled, args, images, labels)
            if side.step is None:
                notes[f"{config} compiled"] = side.error
                print(f"  {config}: compiled: {side.error}", flush=True)
            else:
                compile_seconds[config] = side.seconds
                print(f"  {config}: compiled in {side.seconds:.1f} s (float "
                      f"{side.float_seconds:.1f} s); {side.warm_up}", flush=True)
                rounds.append(("compiled", float_compiled, "compiled", side.step))
        elif compiled:
            notes[f"{config} compiled"] = JOINT_NOTE
        times: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for column, base_step, name, step in rounds:
                base = seconds(base_step, images, labels)
                float_times[column].append(base)
                times.setdefault(f"float {column}", []).append(base)
                times.setdefault(name, []).append(seconds(step, images, labels))
        ratios[config] = {}
        for column in ("eager", "compiled"):
            if column in times:
                ratios[config][column] = [
                    t / b for t, b in zip(times[column], times[f"float {column}"])]
        if "eager" in times and "compiled" in times:
            ratios[config]["compiled/eager"] = [
                c / e for c, e in zip(times["compiled"], times["eager"])]
        if side is not None and side.step is not None:
            print(f"  {config}: {side.check(images, labels)}", flush=True)
            if side.notes:
                notes[f"{config} compiled"] = "; ".join(side.notes)
                print(f"  {config}: compiled: {notes[f'{config} compiled']}", flush=True)
        del rounds, side
        torch._dynamo.reset()

    values: dict[str, float | None] = {}
    for config, columns_of in ratios.items():
        medians = {c: round(statistics.median(r), 3) for c, r in columns_of.items()}
        if eager:
            values[config] = medians["eager"]
        if compiled and compilable(config):
            values[f"{config} compiled"] = medians.get("compiled")
            if eager:
                values[f"{config} compiled/eager"] = medians.get("compiled/eager")
                values[f"{config} best"] = min(
                    m for m in (medians["eager"], medians.get("compiled")) if m is not None)
    targets = {label: bound for config in ratios
               for label, bound in targets_of(config).items() if label in values}

    float_text = ", ".join(
        f"{column} {statistics.median(t) * 1e3:.1f} ms" for column, t in float_times.items() if t)
    print(f"float step: {float_text} (medians); ratios to it, median of {args.repeats} "
          f"rounds (min-max):")
    header = f"  {'config':<17}" + "".join(f" {column:<19}" for column in columns)
    print(header + (f" {'compile s':>9}" if compiled else "") + "  targets")
    for config, columns_of in ratios.items():
        line = f"  {config:<17}"
        for column in columns:
            line += f" {spread(columns_of[column]) if column in columns_of else '-':<19}"
        if compiled:
            line += f" {compile_seconds[config]:9.1f}" if config in compile_seconds else " " * 10
        goals = [f"{label.removeprefix(config).strip() or 'eager'} <= {bound}"
                 for label, bound in targets_of(config).items() if label in targets]
        print(line + ("  " + ", ".join(goals) if goals else ""))
    for label, note in notes.items():
        print(f"  note: {label}: {note}")
    result = {"bench": "train_step", "values": values, "targets": targets}
    if notes:
        result["notes"] = notes
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
