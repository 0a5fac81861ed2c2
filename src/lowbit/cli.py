"""The ``lowbit`` command line: ``lowbit train | methods``.

User mistakes (``LowbitError``) print one line and exit with status 2; an interrupted run
says how to resume it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lowbit.errors import LowbitError


def _train(args: argparse.Namespace) -> int:
    from lowbit.train.config import resolve_config
    from lowbit.train.run import resume, run_training

    if args.resume:
        summary = resume(args.resume)
    else:
        overrides = list(args.set)
        if args.data_dir:
            overrides.append(f"data.dir={args.data_dir}")
        if args.init:
            overrides.append(f"init={args.init}")
        if args.out:
            overrides.append(f"out={args.out}")
        summary = run_training(resolve_config(args.recipe, overrides))
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    rows = []
    if summary["float_top1"] is not None:
        rows.append(("float", summary["float_top1"], summary["seconds"].get("float")))
    if summary["method"] != "float":
        rows.append(
            (
                f"{summary['method']} {summary['bits']}-bit",
                summary["top1"],
                summary["seconds"].get("quant"),
            )
        )
    lines = [
        f"\n{summary['model']} on {summary['data']} ({summary['n']} test images)",
        f"{'model':<16}{'top-1':>8}{'time':>9}",
    ]
    for name, top1, seconds in rows:
        time_text = f"{seconds:.1f}s" if seconds is not None else "-"
        lines.append(f"{name:<16}{top1:>7.2f}%{time_text:>9}")
    lines.append(f"run directory: {summary['run_dir']}")
    return "\n".join(lines)


def _methods(args: argparse.Namespace) -> int:
    from lowbit.quant.registry import available_methods, get_method

    for name in available_methods():
        method = get_method(name)
        print(f"{name:<16}{method.min_bits}-{method.max_bits} bits  {method.summary}")
    return 0


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
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    train.set_defaults(handler=_train)

    methods = commands.add_parser("methods", help="list the quantization methods")
    methods.set_defaults(handler=_methods)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except LowbitError as error:
        print(f"lowbit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (resume with: lowbit train --resume RUN_DIR)" if args.command == "train" else ""
        print(f"lowbit: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
