"""The ``lowbit`` command line: ``lowbit train | eval | import | methods | sweep | recipes |
report | plot | export | diagnose | analyze``.

User mistakes (``LowbitError``) print one line and exit with status 2; an interrupted run
says how to resume it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from tqdm import tqdm

from lowbit.allocator import reuse_freed_memory
from lowbit.errors import LowbitError


def _train(args: argparse.Namespace) -> int:
    from lowbit.train.config import resolve_config
    from lowbit.train.run import RESUME_SETTINGS, resume, run_training

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.dir={args.data_dir}")
    if args.resume:
        extra = [f"{flag} {value}" for flag, value in
                 (("RECIPE", args.recipe), ("--init", args.init), ("--out", args.out)) if value]
        if extra:
            raise LowbitError(
                f"--resume continues a run as it was configured; it takes --data-dir and "
                f"--set of {', '.join(RESUME_SETTINGS)}, not {extra[0]}"
            )
        summary = resume(args.resume, overrides)
    else:
        if args.init:
            overrides.append(f"init={args.init}")
        if args.out:
            overrides.append(f"out={args.out}")
        recipe = args.recipe or None  # a file or packaged name; "" too runs the demo
        summary = run_training(resolve_config(recipe, overrides))
    if summary["run_dir"] is not None:  # rank 0 of a torchrun job, or a single process
        print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    rows = []
    if summary["float_top1"] is not None:
        rows.append(("float", summary["float_top1"], summary["seconds"].get("float")))
    if summary["method"] != "float":
        bits = summary["bits"]
        if isinstance(bits, list):  # adaptive: the mean over the bit-widths, then each
            bits = "/".join(map(str, bits))
        rows.append(
            (
                f"{summary['method']} {bits}-bit",
                summary["top1"],
                summary["seconds"].get("quant"),
            )
        )
    lines = [
        f"\n{summary['model']} on {summary['data']} ({summary['n']} test images)",
        f"{'model':<20}{'top-1':>8}{'time':>9}",
    ]
    for name, top1, seconds in rows:
        time_text = f"{seconds:.1f}s" if seconds is not None else "-"
        lines.append(f"{name:<20}{top1:>7.2f}%{time_text:>9}")
    for bits, top1 in summary.get("top1_by_bits", {}).items():  # one network, several bits
        lines.append(f"{'  at ' + bits + '-bit':<20}{top1:>7.2f}%")
    if summary.get("learned_bits"):
        learned = ", ".join(f"{k} {v}" for k, v in summary["learned_bits"].items())
        lines.append(f"learned weight bits: {learned}")
    lines.append(f"run directory: {summary['run_dir']}")
    return "\n".join(lines)


def _bit_list(text: str) -> list[int]:
    """``--bits 2,3,4``; a bad list is a one-line error."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise LowbitError(f"--bits takes whole numbers separated by commas, got {text!r}") from None


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lowbit.evaluate import evaluate_checkpoint

    if args.onnx is not None:
        return _eval_onnx(args)
    if args.checkpoint is None:
        raise LowbitError("give lowbit eval a CHECKPOINT (or --onnx FILE, an exported model)")
    if (Path(args.checkpoint) / "manifest.json").is_file():
        return _eval_export(args)
    bits = None if args.bits is None else _bit_list(args.bits)
    individual = None
    if args.individual is not None:
        from lowbit.adaptive.evaluation import parse_individual

        if bits is None:
            raise LowbitError("--individual compares an adaptive network's --bits rows; add --bits")
        individual = parse_individual(args.individual)
    result = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.data_dir,
        args.batch_size,
        args.device,
        bits,
        args.calibration_batches,
    )
    if individual is not None:
        from lowbit.adaptive.evaluation import relative_accuracy

        result["delta_b"] = relative_accuracy(result["rows"], result["trained_bits"], individual)
    if args.json:
        print(json.dumps(result))
        return 0
    if Path(args.checkpoint).is_dir():  # a run directory: say which checkpoint it chose
        print(f"checkpoint: {result['checkpoint']}")
    if bits is not None:
        from lowbit.adaptive.evaluation import format_bits_table

        trained = ", ".join(map(str, result["trained_bits"]))
        print(
            format_bits_table(
                result["rows"],
                f"{result['model']} {result['method']}, B = {{{trained}}}, on {result['data']} "
                f"({result['rows'][0]['n']} test images)",
                individual,
                result.get("delta_b"),
            )
        )
    else:
        print(_accuracy_line(result))
    return 0


def _accuracy_line(result: dict) -> str:
    label = result["method"]
    if label != "float":
        label += f" {result['bits']}-bit"
    return (
        f"{result['model']} {label} on {result['data']} ({result['n']} test images): "
        f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%"
    )


def _eval_onnx(args: argparse.Namespace) -> int:
    """``lowbit eval --onnx FILE``: the deployed model on onnxruntime, same data options."""
    from lowbit.evaluate import evaluate_onnx

    _only_data_options(args, "--onnx evaluates the exported file", checkpoint=True)
    result = evaluate_onnx(args.onnx, args.data, args.data_dir, args.batch_size, args.threads)
    print(json.dumps(result) if args.json else _accuracy_line(result))
    return 0


def _eval_export(args: argparse.Namespace) -> int:
    """``lowbit eval EXPORT_DIR``: a ``lowbit export`` directory on the pure-PyTorch deploy
    runtime (no onnxruntime needed), same data options."""
    from lowbit.evaluate import evaluate_export

    _only_data_options(args, "an export directory is evaluated", checkpoint=False)
    if args.threads is not None:
        raise LowbitError("--threads sets onnxruntime's threads; it goes with --onnx FILE")
    result = evaluate_export(args.checkpoint, args.data, args.data_dir, args.batch_size)
    print(json.dumps(result) if args.json else _accuracy_line(result))
    return 0


def _only_data_options(args: argparse.Namespace, what: str, checkpoint: bool) -> None:
    """A deployed model is evaluated at the bit-width it was exported at, alone: one line
    for an option that does not apply."""
    given = (("CHECKPOINT", args.checkpoint if checkpoint else None), ("--bits", args.bits),
             ("--individual", args.individual), ("--calibration-batches", args.calibration_batches))
    extra = [name for name, value in given if value is not None]
    if extra:
        raise LowbitError(f"{what} alone; drop {extra[0]}")


def _import_apot_official(args: argparse.Namespace) -> int:
    from lowbit.convert import import_apot_official

    result = import_apot_official(args.src, args.bits, args.out)
    print(
        f"wrote {result['checkpoint']}: {result['model']} ({result['bits']}-bit, "
        f"{result['data']}); evaluate it with: lowbit eval {result['checkpoint']} --data-dir DIR"
    )
    return 0


def _import_pytorchcv(args: argparse.Namespace) -> int:
    from lowbit.convert import import_pytorchcv_preresnet

    result = import_pytorchcv_preresnet(args.src, args.out)
    print(f"wrote {result['checkpoint']}: {result['model']} float weights; start a run from it "
          f"with --init {result['checkpoint']}")
    return 0


def _methods(args: argparse.Namespace) -> int:
    from lowbit.quant.registry import available_methods, get_method

    for name in available_methods():
        method = get_method(name)
        print(f"{name:<16}{method.min_bits}-{method.max_bits} bits  {method.summary}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lowbit.train.recipes import find_recipe
    from lowbit.train.sweep import format_table, load_spec, rows_from_recipes, run_sweep

    if bool(args.spec) == bool(args.recipe):
        raise LowbitError("give lowbit sweep either a SPEC file or --recipe (repeatable)")
    rows = load_spec(args.spec) if args.spec else rows_from_recipes(args.recipe)
    name = find_recipe(args.spec).stem if args.spec else rows[0].name
    sweep_dir = Path(args.out or Path("runs") / f"sweep-{name}")
    overrides = list(args.set) + ([f"data.dir={args.data_dir}"] if args.data_dir else [])
    records = run_sweep(rows, sweep_dir, overrides)
    print(format_table(records, f"Sweep {sweep_dir.name}"))
    print(f"table and sweep.json in {sweep_dir}")
    return 1 if any(record["status"] == "failed" for record in records) else 0


def _recipes(args: argparse.Namespace) -> int:
    from lowbit.train.recipes import describe_packaged

    for kind, name, description in describe_packaged():
        print(f"{kind:<7} {name:<42} {description}")
    return 0


def _layer_bits(text: str) -> int | None:
    """``--first-last-bits``: a number, or float / none / 32 for float layers."""
    if text.lower() in ("float", "none", "32"):
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected bits or 'float', got {text!r}")
    return int(text)


def _report(args: argparse.Namespace) -> int:
    from lowbit.analysis.cost import model_cost
    from lowbit.analysis.report import (
        deploy_sizes,
        format_report,
        format_sizes,
        load_model,
        sample_input,
    )

    # A zoo model is only counted, so it is built on the meta device (no memory, no init).
    model, info = load_model(args.model, args.method, args.bits, args.first_last_bits, "meta")
    sample = sample_input(model, info, args.image_size)
    cost = model_cost(model, sample)
    # A trained checkpoint also gets the sizes of its two deployments (codes needed).
    trained = info["method"] != "float" and not sample.is_meta
    sizes = deploy_sizes(model, sample, info) if trained else {}
    if args.json:
        keys = ("name", "method", "bits")
        print(json.dumps({**{key: info[key] for key in keys}, **cost.to_dict(), **sizes}))
    else:
        print(format_report(cost, info))
        if sizes:
            print(format_sizes(sizes))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lowbit.analysis import plots, run_plots
    from lowbit.analysis.report import load_model, sample_input
    from lowbit.nn.calibrate import calibrate

    source = Path(args.source)
    if source.is_dir():  # a run directory, else a sweep's
        out = Path(args.out) if args.out else source
        if (source / "metrics.jsonl").is_file():
            written = run_plots.write_run_figures(source, out, args.layers)
        else:
            written = run_plots.write_sweep_figures(source, out)
    else:
        if args.out is None and not source.is_file():
            raise LowbitError(f"give -o DIR: where to write the figures of {args.source!r}")
        out = Path(args.out) if args.out else source.parent
        model, info = load_model(args.source, args.method, args.bits, args.first_last_bits)
        sample = sample_input(model, info, args.image_size, batch=8).normal_()
        calibrate(model, [sample], 1)  # sets the step sizes a fresh zoo model lacks
        written = plots.write_model_figures(model, sample, out, args.layers)
    for path in written:
        print(f"wrote {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from lowbit.analysis.cost import model_cost
    from lowbit.analysis.report import load_model, sample_input, significant
    from lowbit.export.bit_width import single_bit_width
    from lowbit.export.onnx import check_target, checkpoint_metadata, export_onnx, onnx_summary
    from lowbit.export.writer import export_model

    if args.onnx:  # a bad ONNX path fails before the export directory is written
        check_target(Path(args.onnx))
    model, info = load_model(args.checkpoint)
    model = single_bit_width(model, args.bits)  # a CoQuant network: the chosen bit-width
    keys = ("name", "options", "num_classes", "in_channels")
    sample = sample_input(model, info, args.image_size)
    metadata = checkpoint_metadata(args.checkpoint, info, sample, args.bits)
    out = export_model(model, args.out, {key: info[key] for key in keys}, run=metadata)
    size = sum(os.path.getsize(path) for path in Path(out).iterdir())
    expected = model_cost(model, sample_input(model, info, args.image_size)).size_mb
    print(
        f"wrote {out}: {significant(size / 2**20)} MB on disk "
        f"(lowbit report: {significant(expected)} MB)"
    )
    if args.onnx:
        path = export_onnx(model, args.onnx, sample, metadata)
        print(f"wrote {path}: {onnx_summary(path)}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from lowbit.analysis import analyze

    return analyze.run(args)


def _diagnose(args: argparse.Namespace) -> int:
    from lowbit.analysis import relaxed_diagnostics

    return relaxed_diagnostics.run(args)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``report`` and ``plot`` that build the model to look at (``load_model``)
    and its sample input."""
    parser.add_argument("--method", help="quantize a zoo model with this method")
    parser.add_argument("--bits", type=int, help="bits of the method (with --method)")
    parser.add_argument(
        "--first-last-bits",
        type=_layer_bits,
        default=8,
        help="bits of the first and last layers, or 'float' (default 8)",
    )
    parser.add_argument("--image-size", type=int, help="input side (default: the model's data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit", description="Low-bit quantization-aware training."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train a network (no arguments: APoT 4-bit on the embedded digits set)"
    )
    train.add_argument("recipe", nargs="?", help="YAML recipe (default: the embedded demo)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set bits=3 --set data.limit=2000",
    )
    train.add_argument("--data-dir", help="where the data set's files are")
    train.add_argument("--init", help="checkpoint to initialize from (progressive init)")
    train.add_argument("--out", help="parent directory of the run directory (default runs/)")
    train.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue an interrupted run (with --data-dir or --set device, data.dir, "
        "data.workers, progress_seconds only)",
    )
    _add_verbosity(train)
    train.set_defaults(handler=_train)

    evaluation = commands.add_parser(
        "eval", help="top-1/top-5 of a lowbit checkpoint, or of an exported ONNX model"
    )
    evaluation.add_argument(
        "checkpoint",
        nargs="?",
        help="a .pt from lowbit train or lowbit import, or a run directory (its best.pt, else "
        "last.pt)",
    )
    evaluation.add_argument(
        "--onnx", metavar="FILE",
        help="instead of a checkpoint: an ONNX file of lowbit export --onnx, run on onnxruntime",
    )
    evaluation.add_argument(
        "--threads", type=int, help="onnxruntime intra-op threads with --onnx (default 2)"
    )
    evaluation.add_argument("--data", help="data set name (default: the checkpoint's)")
    evaluation.add_argument("--data-dir", help="where the data set's files are")
    evaluation.add_argument("--batch-size", type=int, help="evaluation batch size")
    evaluation.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluation.add_argument("--json", action="store_true", help="print one JSON object")
    evaluation.add_argument(
        "--bits",
        metavar="B,B,...",
        help="a network trained with adaptive.bits: test at each of these bit-widths, e.g. "
        "2,3,4,5,6,7,8 (those it was not trained at: zero-shot, BatchNorm recalibrated)",
    )
    evaluation.add_argument(
        "--individual",
        metavar="B=TOP1,...",
        help="with --bits: top-1 of networks trained at one bit-width each, as numbers or run "
        "directories (e.g. 8=95.1,4=runs/r18-4bit); prints Delta_B, CoQuant's relative accuracy",
    )
    evaluation.add_argument(
        "--calibration-batches",
        type=int,
        metavar="N",
        help="training batches for zero-shot BatchNorm recalibration (default: the run's "
        "adaptive.bn_calibration_batches)",
    )
    evaluation.set_defaults(handler=_eval)

    importer = commands.add_parser("import", help="convert another code's checkpoint")
    formats = importer.add_subparsers(dest="format", required=True)
    apot = formats.add_parser(
        "apot-official", help="the APoT authors' CIFAR ResNet checkpoints (.pth.tar)"
    )
    apot.add_argument("src", help="the authors' checkpoint file")
    apot.add_argument("--bits", required=True, help="bits it was trained with: 2-5, or 32/float")
    apot.add_argument("-o", "--out", required=True, help="the lowbit checkpoint to write")
    apot.set_defaults(handler=_import_apot_official)
    pytorchcv = formats.add_parser(
        "pytorchcv-preresnet",
        help="PytorchCV's preresnet18/34 float weights (UniQ's starts) for preact_resnet18/34",
    )
    pytorchcv.add_argument("src", help="PytorchCV's .pth file (a state dict)")
    pytorchcv.add_argument("-o", "--out", required=True, help="the file to write, for --init")
    pytorchcv.set_defaults(handler=_import_pytorchcv)

    methods = commands.add_parser("methods", help="list the quantization methods")
    methods.set_defaults(handler=_methods)

    sweep = commands.add_parser(
        "sweep", help="train a list of recipes in turn; table of paper vs ours (resumable)"
    )
    sweep.add_argument("spec", nargs="?", help="sweep YAML (a list of rows) or packaged name")
    sweep.add_argument(
        "--recipe", action="append", default=[], help="a row: recipe file or name (repeatable)"
    )
    sweep.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every row"
    )
    sweep.add_argument("--data-dir", help="where the data set's files are (every row)")
    sweep.add_argument("--out", help="sweep directory (default runs/sweep-<spec or recipe>)")
    _add_verbosity(sweep)
    sweep.set_defaults(handler=_sweep)

    recipes = commands.add_parser("recipes", help="list the packaged recipes and sweeps")
    recipes.set_defaults(handler=_recipes)

    report = commands.add_parser(
        "report", help="size, MACs, FixOPs and BitOPs per layer (APoT Table 1 conventions)"
    )
    report.add_argument("model", help="zoo model name or lowbit checkpoint")
    _add_model_arguments(report)
    report.add_argument("--json", action="store_true", help="print one JSON object")
    report.set_defaults(handler=_report)

    plot = commands.add_parser(
        "plot", help="PNGs: a run's learning curves and training dynamics, histograms with "
        "levels, clipping ratio, or a sweep's accuracy vs bits"
    )
    plot.add_argument(
        "source", help="run directory, sweep directory, lowbit checkpoint or zoo model name"
    )
    plot.add_argument(
        "-o", "--out",
        help="directory for the PNG files (default: the run or sweep directory, or the "
        "checkpoint's; needed for a zoo model)",
    )
    _add_model_arguments(plot)
    plot.add_argument("--layers", type=int, default=6, help="layers to show (default 6)")
    plot.set_defaults(handler=_plot)

    export = commands.add_parser(
        "export", help="integer codes + scales (safetensors) and a manifest; optional ONNX"
    )
    export.add_argument("checkpoint", help="a quantized lowbit checkpoint")
    export.add_argument("-o", "--out", required=True, help="export directory (new or empty)")
    export.add_argument(
        "--onnx", metavar="FILE",
        help="also write an ONNX graph with integer convolutions (ConvInteger / MatMulInteger)",
    )
    export.add_argument("--image-size", type=int, help="input side (default: the model's data)")
    export.add_argument(
        "--bits", type=int,
        help="a network trained at several bit-widths (adaptive.bits): the one to export",
    )
    export.set_defaults(handler=_export)

    # Its options are defined there; importing it costs little (lowbit.quant is loaded).
    from lowbit.analysis import relaxed_diagnostics

    diagnose = commands.add_parser(
        "diagnose",
        help="SRQ Fig. 6: quantization error, distribution bias and gradient variance of "
        "RQ, SRQ and SRQ+DropBits (e.g. --bits 3 --plot fig6.png)",
        description=relaxed_diagnostics.DESCRIPTION,
    )
    relaxed_diagnostics.add_arguments(diagnose)
    diagnose.set_defaults(handler=_diagnose)

    from lowbit.analysis import analyze

    analysis = commands.add_parser(
        "analyze",
        help="APoT Fig. 6: per layer, Eq. 14's clipping and projection errors at the "
        "quantizer's alpha and at QEM's (error-minimizing) alpha",
        description=analyze.DESCRIPTION,
    )
    analysis.add_argument("source", help="run directory, lowbit checkpoint or zoo model name")
    _add_model_arguments(analysis)
    analyze.add_arguments(analysis)
    analysis.set_defaults(handler=_analyze)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reuse_freed_memory()
    _show_library_notes(getattr(args, "verbosity", 0))
    try:
        return args.handler(args)
    except LowbitError as error:
        print(f"lowbit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"lowbit: interrupted{_resume_hint(args.command, interrupt)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lowbit recipes | head`: the reader has all it wanted
        # Point stdout at nothing, so that Python's flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _resume_hint(command: str, interrupt: KeyboardInterrupt) -> str:
    if command == "train":
        resume = getattr(interrupt, "resume_command", None)
        return f" (resume with: {resume})" if resume else " before the first checkpoint"
    if command == "sweep":
        return " (run the same lowbit sweep command again to continue)"
    return ""


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes (callers may swap it); on a
    terminal through tqdm, so that a line logged under a progress bar does not break it."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # no fixed stream: see ``stream``

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.stream.isatty():
                tqdm.write(self.format(record), file=self.stream)
            else:
                super().emit(record)
        except Exception:  # logging's contract: a failing handler never raises
            self.handleError(record)


def _show_library_notes(verbosity: int) -> None:
    """Print what the library logs (progress, epoch lines, which layers got signed input
    quantizers) on stderr: INFO and up, DEBUG with --verbose, warnings only with --quiet.
    A program importing lowbit configures logging itself."""
    logger = logging.getLogger("lowbit")
    if not logger.handlers:
        handler = _StderrHandler()
        # In a log file each line says when it was written; a terminal shows it live.
        stamp = "" if sys.stderr.isatty() else "%(asctime)s "
        handler.setFormatter(logging.Formatter(stamp + "%(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    levels = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}
    logger.setLevel(levels[verbosity])


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` / ``--verbose``: how much of the library's log reaches stderr."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
        help="warnings and errors only (no progress, no epoch lines)",
    )
    group.add_argument(
        "-v", "--verbose", dest="verbosity", action="store_const", const=1,
        help="also debugging detail",
    )


if __name__ == "__main__":
    sys.exit(main())
