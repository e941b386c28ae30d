"""The `benchmark` command line, one module per command (run, table and compare, evaluate, register,
predict and export, explain, perf, ui, and the listings); the only part that reads flags and prints for the user. May import
every other part."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..core import interrupt
from ..core.errors import BenchmarkError
from . import adapt, evaluate, explain, listing, perf, predict, register, reliability, run, table, ui


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmark",
        description="Generalizable facial expression recognition: train on one dataset, test on all five.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (run, adapt, table, reliability, evaluate, register, predict, explain, listing, perf, ui):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:  # MLflow's INFO lines (creating tables, ...) are noise to a user; -v shows them
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # per checkpoint read back
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    interrupt.install()
    try:
        return int(args.func(args) or 0)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line, not a traceback; runs were closed as KILLED on the way out
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
